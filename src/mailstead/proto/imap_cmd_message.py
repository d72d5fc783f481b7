"""IMAP commands that change messages: STORE (with CONDSTORE UNCHANGEDSINCE), COPY, MOVE
(RFC 6851), EXPUNGE and UID EXPUNGE (RFC 4315), with COPYUID. Pure code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailstead.proto import imap_format as fmt
from mailstead.proto.imap_args import Command, CopyArgs, StoreArgs, UidExpungeArgs
from mailstead.proto.imap_format import CommandError, Reply
from mailstead.proto.imap_uidonly import fetch_head

if TYPE_CHECKING:
    from mailstead.proto.imap_backend import SelectedView
    from mailstead.proto.imap_session import ImapSession


def _writable(s: ImapSession) -> SelectedView:
    view = s.require_view()
    if view.readonly:
        raise CommandError("NO", "Mailbox is read-only (EXAMINE)", "READ-ONLY")
    return view


async def cmd_store(s: ImapSession, cmd: Command) -> Reply:
    args = cmd.args
    assert isinstance(args, StoreArgs)
    view = _writable(s)
    uids = s.resolve(args.numbers, cmd.uid)
    try:
        bits, keywords = fmt.parse_flags(args.flags)
    except fmt.FlagError as exc:
        return Reply("BAD", str(exc))
    if args.unchangedsince is not None:
        s.enable_condstore()  # RFC 7162 3.1
    mode = {"add": "add", "remove": "remove", "replace": "replace"}[args.mode]
    result = await view.store_flags(
        uids, mode, bits, keywords, args.unchangedsince  # type: ignore[arg-type]
    )
    failed = set(result.failed_uids)
    if s.contexts is not None:  # own changes are not reported back: CONTEXT updates need them
        s.contexts.touch([st.uid for st in result.changed])
    if mode != "remove":  # the mailbox's FLAGS list grows, silent or not (RFC 9051 7.3.5)
        s.announce_keywords([keywords])
    if not args.silent:
        # RFC 9051 6.4.6: the new flags of every message in the set (read again only when
        # some of them did not change, so their flags are not in the result).
        wanted = [u for u in uids if u not in failed]
        states = result.changed
        if len(states) != len(wanted):
            states = await view.flag_states(wanted)
        s.announce_keywords([st.keywords for st in states])
        lines = []
        for st in states:
            seq = view.seq_of(st.uid)
            if seq is not None:
                lines.append(s.flags_fetch_line(
                    seq, st.uid, st.flags, st.keywords, st.modseq, with_uid=cmd.uid or s.qresync
                ))
        s.io.write(b"".join(lines))
    elif s.condstore:
        # RFC 7162 3.1.3: even with .SILENT the client learns each new MODSEQ.
        lines = []
        for st in result.changed:
            seq = view.seq_of(st.uid)
            if seq is not None:
                with_uid = (cmd.uid or s.qresync) and not s.uidonly
                uid_part = b"UID %d " % st.uid if with_uid else b""
                head = fetch_head(s.uidonly, seq, st.uid)  # RFC 9586 3.3: UIDFETCH
                lines.append(head + b"%sMODSEQ (%d))\r\n" % (uid_part, st.modseq))
        s.io.write(b"".join(lines))
    if failed:
        numbers = sorted(
            failed if cmd.uid else (view.seq_of(u) or 0 for u in failed)
        )
        code = f"MODIFIED {fmt.sequence_set(n for n in numbers if n)}"
        return Reply("OK", "Conditional STORE failed for some messages", code)
    return Reply("OK", "Store completed")


async def cmd_copy(s: ImapSession, cmd: Command) -> Reply:
    args = cmd.args
    assert isinstance(args, CopyArgs)
    move = cmd.name.endswith("MOVE")
    view = _writable(s) if move else s.require_view()
    account = s.require_account()
    uids = s.resolve(args.numbers, cmd.uid)
    target = await s.mailboxes.find(account.id, s.mailbox_in(args.mailbox))
    if target is None:  # RFC 9051 6.4.7
        return Reply("NO", "Mailbox does not exist", "TRYCREATE")
    verb = "Move" if move else "Copy"
    if not uids:
        return Reply("OK", f"{verb} completed (no messages)")
    result = await view.copy(uids, target, move)
    code = ""
    if result.pairs:  # RFC 4315 3: COPYUID uidvalidity source-uids dest-uids
        sources = fmt.sequence_set(src for src, _ in result.pairs)
        dests = fmt.sequence_set(dst for _, dst in result.pairs)
        code = f"COPYUID {result.uidvalidity} {sources} {dests}"
    if move:
        # RFC 6851 4.3: COPYUID in an untagged OK before the EXPUNGEs.
        if code:
            s.io.write(fmt.untagged(f"OK [{code}] Moved"))
        return Reply("OK", "Move completed")
    return Reply("OK", "Copy completed", code)


async def cmd_expunge(s: ImapSession, cmd: Command) -> Reply:
    view = _writable(s)
    if isinstance(cmd.args, UidExpungeArgs):  # RFC 4315 2.1: only these UIDs
        uids = s.resolve(cmd.args.numbers, uid=True)
        if uids:
            await view.expunge(uids)
    else:
        await view.expunge()
    return Reply("OK", "Expunge completed")
