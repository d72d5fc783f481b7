"""Ids on the change feed (store/changes.py) for events that are not a mailbox's messages, here
so that the protocol code can name them without importing the store. Mailbox ids are
positive and an account's channel is ``-account_id``; these lie far below both."""

from __future__ import annotations

_KEY_CHANNELS = 1 << 52


def access_key_channel(mailbox_id: int) -> int:
    """URLAUTH RESETKEY (RFC 4467 7.1) of one mailbox's access keys."""
    return -2 * _KEY_CHANNELS - mailbox_id


def access_keys_channel(account_id: int) -> int:
    """URLAUTH RESETKEY (RFC 4467 7.1) of every access key of an account."""
    return -_KEY_CHANNELS - account_id
