"""Errors shared by every layer. Each carries enough to become a protocol reply."""

from __future__ import annotations


class MailsteadError(Exception):
    """Base of every error mailstead raises on purpose."""


class NotFound(MailsteadError):
    """A domain, account, alias, mailbox, message or queue entry does not exist."""


class Conflict(MailsteadError):
    """The thing being created exists already (duplicate user, domain, mailbox...)."""


class InvalidInput(MailsteadError):
    """Input rejected before anything was written (bad address, weak password...)."""


class QuotaExceeded(MailsteadError):
    """Adding this message would put the account over its byte or message quota."""


class CorruptBlob(MailsteadError):
    """A stored message file does not match its SHA-256 name (changed or truncated on disk)."""

    def __init__(self, blob_id: str, reason: str) -> None:
        super().__init__(f"message blob {blob_id} is corrupt: {reason}")
        self.blob_id = blob_id
        self.reason = reason


class ConfigError(MailsteadError):
    """The configuration file is wrong. The message names the option and why."""


class SchemaError(ConfigError):
    """The store's schema cannot be used by this binary: newer than it knows, or a migration
    failed (and was rolled back). ``mailstead serve`` exits 2 with this one line."""
