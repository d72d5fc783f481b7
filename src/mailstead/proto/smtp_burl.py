"""BURL (RFC 4468): a submission client names message data by IMAP URL instead of sending it.
Pure code; the session (proto/smtp.py) calls ``burl`` for the BURL command, and ``fetch`` (the
driver's, through URLAUTH, proto/imap_urlauth.py) reads what a URL names on behalf of the
authenticated user ("submit+<user>" URLs, RFC 4467 3).

``BURL imap-url [LAST]`` appends the URL's data to the message the transaction is building, as
a BDAT chunk would (RFC 4468 3.2: BURL and BDAT mix; DATA after them is refused); ``LAST``
ends it and the message is submitted. A URL that cannot be read fails with 554 5.6.6 (RFC 4468
6) and, like a failed BDAT chunk (RFC 3030 2), ends the transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from mailstead.proto.smtp import Reply, reply

if TYPE_CHECKING:
    from mailstead.proto.smtp import SmtpSession

# (url, the authenticated user's address) -> the data, or None when it cannot be used.
UrlFetcher = Callable[[str, str], Awaitable[bytes | None]]

RESOLUTION_FAILED = "IMAP URL resolution failed"


def ehlo_keyword(hostname: str) -> str:
    """RFC 4468 3.1: "imap" (URLAUTH URLs are taken) and this server as the IMAP server the
    submission server is trusted by (so "submit+" URLs of it work)."""
    return f"BURL imap imap://{hostname}"


async def burl(session: SmtpSession, fetch: UrlFetcher, arg: str) -> Reply:
    parts = arg.split(" ")
    if not 1 <= len(parts) <= 2 or not parts[0] or (
        len(parts) == 2 and parts[1].upper() != "LAST"
    ):
        return reply(501, "5.5.4", "Syntax: BURL imap-url [LAST]")
    url, last = parts[0], len(parts) == 2
    account = session.account
    if account is None:  # RFC 4468 3.2: the URL is read on behalf of the authenticated user
        return reply(530, "5.7.0", "Authentication required")
    refusal = session._ready_for_message()
    if refusal is not None:
        return refusal
    txn = session.txn
    assert txn is not None
    if not url.lower().startswith("imap://"):
        return reply(554, "5.7.8", "Only IMAP URLs are taken")  # RFC 4468 3.3
    data = await fetch(url, account.address)
    if data is None or session._chunk_size + len(data) > session.policy.max_message_size:
        answer = (reply(554, "5.6.6", RESOLUTION_FAILED) if data is None
                  else reply(552, "5.3.4", "Message size exceeds fixed maximum message size"))
        session.backend.transaction_done(txn, session._chunk_size, answer)
        session._reset_transaction()
        return answer
    # The data joins the message as one more chunk; the BDAT path finishes it.
    session.start_chunk(last)
    session.on_chunk(data)
    return await session.on_chunk_end()
