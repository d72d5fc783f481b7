"""The IMAP command table: which handler runs each command, and in which states it is valid
(RFC 9051 6: any state, not authenticated, authenticated, selected). Pure code."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from mailstead.proto import (
    imap_cmd_fetch,
    imap_cmd_mailbox,
    imap_cmd_message,
    imap_cmd_sort,
    imap_context,
    imap_notify,
    imap_search,
    imap_urlauth,
)
from mailstead.proto.imap_args import Command
from mailstead.proto.imap_format import Reply
from mailstead.proto.imap_session import ImapSession, State

Handler = Callable[[ImapSession, Command], Awaitable[Reply]]

ANY = frozenset({State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED})
NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
SELECTED = frozenset({State.SELECTED})

S = ImapSession
HANDLERS: dict[str, tuple[frozenset[State], Handler]] = {
    "CAPABILITY": (ANY, S.cmd_capability),
    "NOOP": (ANY, S.cmd_noop),
    "LOGOUT": (ANY, S.cmd_logout),
    "ID": (ANY, S.cmd_id),
    "STARTTLS": (NOT_AUTH, S.cmd_starttls),
    "LOGIN": (NOT_AUTH, S.cmd_login),
    "AUTHENTICATE": (NOT_AUTH, S.cmd_authenticate),
    "ENABLE": (AUTH, S.cmd_enable),
    "COMPRESS": (AUTH, S.cmd_compress),
    "UNAUTHENTICATE": (AUTH, S.cmd_unauthenticate),
    "SELECT": (AUTH, S.cmd_select),
    "EXAMINE": (AUTH, S.cmd_select),
    "IDLE": (AUTH, S.cmd_idle),
    "CREATE": (AUTH, imap_cmd_mailbox.cmd_create),
    "DELETE": (AUTH, imap_cmd_mailbox.cmd_delete),
    "RENAME": (AUTH, imap_cmd_mailbox.cmd_rename),
    "SUBSCRIBE": (AUTH, imap_cmd_mailbox.cmd_subscribe),
    "UNSUBSCRIBE": (AUTH, imap_cmd_mailbox.cmd_subscribe),
    "LIST": (AUTH, imap_cmd_mailbox.cmd_list),
    "LSUB": (AUTH, imap_cmd_mailbox.cmd_lsub),
    "NAMESPACE": (AUTH, imap_cmd_mailbox.cmd_namespace),
    "STATUS": (AUTH, imap_cmd_mailbox.cmd_status),
    "APPEND": (AUTH, imap_cmd_mailbox.cmd_append),
    "GETQUOTA": (AUTH, imap_cmd_mailbox.cmd_getquota),
    "GETQUOTAROOT": (AUTH, imap_cmd_mailbox.cmd_getquotaroot),
    "SETQUOTA": (AUTH, imap_cmd_mailbox.cmd_setquota),
    "NOTIFY": (AUTH, imap_notify.cmd_notify),
    "GENURLAUTH": (AUTH, imap_urlauth.cmd_genurlauth),
    "URLFETCH": (AUTH, imap_urlauth.cmd_urlfetch),
    "RESETKEY": (AUTH, imap_urlauth.cmd_resetkey),
    "CHECK": (SELECTED, S.cmd_noop),
    "CLOSE": (SELECTED, S.cmd_close),
    "UNSELECT": (SELECTED, S.cmd_unselect),
    "EXPUNGE": (SELECTED, imap_cmd_message.cmd_expunge),
    "UID EXPUNGE": (SELECTED, imap_cmd_message.cmd_expunge),
    "SEARCH": (SELECTED, imap_search.cmd_search),
    "UID SEARCH": (SELECTED, imap_search.cmd_search),
    "FETCH": (SELECTED, imap_cmd_fetch.cmd_fetch),
    "UID FETCH": (SELECTED, imap_cmd_fetch.cmd_fetch),
    "STORE": (SELECTED, imap_cmd_message.cmd_store),
    "UID STORE": (SELECTED, imap_cmd_message.cmd_store),
    "COPY": (SELECTED, imap_cmd_message.cmd_copy),
    "UID COPY": (SELECTED, imap_cmd_message.cmd_copy),
    "MOVE": (SELECTED, imap_cmd_message.cmd_copy),
    "UID MOVE": (SELECTED, imap_cmd_message.cmd_copy),
    "SORT": (SELECTED, imap_cmd_sort.cmd_sort),
    "UID SORT": (SELECTED, imap_cmd_sort.cmd_sort),
    "THREAD": (SELECTED, imap_cmd_sort.cmd_thread),
    "UID THREAD": (SELECTED, imap_cmd_sort.cmd_thread),
    "CANCELUPDATE": (SELECTED, imap_context.cmd_cancelupdate),
}
