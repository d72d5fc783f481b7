"""mailstead: a complete, self-hostable mail server."""

__version__ = "0.1.0"
