"""A mail user's side: the terminal mail client (tui.py) over any IMAP and SMTP server
(connection.py)."""
