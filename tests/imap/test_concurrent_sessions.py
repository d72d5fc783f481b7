"""Ten sessions on one mailbox at once, each checked from its own view (issue 17): flags and
keywords change, messages arrive and go, and every session must see a consistent story:
no keyword before a FLAGS response named it, UIDs only going up, no expunged UID coming back,
the same flags everywhere once all have caught up, and each \\Recent message in one session."""

from __future__ import annotations

import random
import re
import threading

import pytest

from tests.conftest import RunningServer
from tests.imap.helpers import Raw, deliver, message

SESSIONS = 10
ROUNDS = 25
KEYWORDS = ["$Work", "$Home", "Later", "Urgent", "$Label1", "Project-X"]
_FETCH = re.compile(rb"^\* (\d+) FETCH \((.*)\)$")
_UID = re.compile(rb"UID (\d+)")
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")


class View:
    """What one session's client knows, built only from the responses it received."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.flags_known: set[str] = set()
        self.uids: list[int | None] = []  # by sequence number - 1; None until a FETCH says
        self.expunged: set[int] = set()
        self.highest_uid = 0
        self.recent: set[int] = set()
        self.flags_of: dict[int, frozenset[str]] = {}

    def take(self, lines: list[bytes]) -> None:
        for line in lines:
            if line.startswith(b"* FLAGS ("):
                self.flags_known = set(line[9 : line.index(b")")].decode().split())
            elif line.endswith(b" EXISTS") and line.startswith(b"* "):
                count = int(line.split()[1])
                assert count >= len(self.uids), f"{self.name}: EXISTS went down: {line!r}"
                self.uids.extend([None] * (count - len(self.uids)))
            elif line.endswith(b" EXPUNGE") and line.startswith(b"* "):
                seq = int(line.split()[1])
                uid = self.uids.pop(seq - 1)
                if uid is not None:
                    self.expunged.add(uid)
                    self.flags_of.pop(uid, None)
            elif (m := _FETCH.match(line)) is not None:
                self._fetch(int(m.group(1)), m.group(2), line)

    def _fetch(self, seq: int, items: bytes, line: bytes) -> None:
        uid_m, flags_m = _UID.search(items), _FLAGS.search(items)
        uid = int(uid_m.group(1)) if uid_m else self.uids[seq - 1]
        if uid_m:
            known = self.uids[seq - 1]
            assert known in (None, uid), f"{self.name}: seq {seq} was UID {known}, now {uid}"
            assert uid not in self.expunged, f"{self.name}: expunged UID {uid} came back"
            self.uids[seq - 1] = uid
            self.highest_uid = max(self.highest_uid, uid)
        if flags_m is None or uid is None:
            return
        flags = flags_m.group(1).decode().split()
        unknown = {f for f in flags if not f.startswith("\\")} - self.flags_known
        assert not unknown, f"{self.name}: keyword {unknown} used without being in FLAGS"
        if "\\Recent" in flags:
            self.recent.add(uid)
        self.flags_of[uid] = frozenset(f for f in flags if f != "\\Recent")

    def check_order(self) -> None:
        known = [u for u in self.uids if u is not None]
        assert known == sorted(known) and len(set(known)) == len(known), (
            f"{self.name}: UIDs out of order: {known}")


def _session(server: RunningServer, n: int, views: list[View], errors: list[str],
             start: threading.Barrier) -> None:
    rng = random.Random(n)
    view = views[n]
    raw = Raw(server)
    try:
        raw.login()
        view.take(raw.cmd("SELECT INBOX"))
        start.wait(30)
        for _round in range(ROUNDS):
            action = rng.random()
            count = len(view.uids)
            if action < 0.35 and count:
                seq = rng.randint(1, count)
                word = rng.choice([*KEYWORDS, f"Fresh{n}x{_round}"])
                sign = rng.choice("+-")
                view.take(raw.cmd(f"STORE {seq} {sign}FLAGS ({word} \\Flagged)"))
            elif action < 0.55:
                word = rng.choice(KEYWORDS)
                data = b"Subject: s%d r%d\r\n\r\nbody\r\n" % (n, _round)
                tag = raw.tag()
                raw.send(f"{tag} APPEND INBOX ({word}) {{{len(data)}+}}\r\n".encode()
                         + data + b"\r\n")
                view.take(raw.until(tag))
            elif action < 0.65 and count > 3:
                seq = rng.randint(1, count)
                view.take(raw.cmd(f"STORE {seq} +FLAGS.SILENT (\\Deleted)"))
                view.take(raw.cmd("EXPUNGE"))
            elif action < 0.85:
                view.take(raw.cmd("FETCH 1:* (UID FLAGS)"))
            else:
                view.take(raw.cmd("NOOP"))
            view.check_order()
        start.wait(60)  # everyone is done changing things
        view.take(raw.cmd("NOOP"))
        view.take(raw.cmd("FETCH 1:* (UID FLAGS)"))
        view.check_order()
        raw.cmd("LOGOUT")
    except Exception as exc:  # reported by the main thread
        errors.append(f"{view.name}: {exc!r}")
        start.abort()
    finally:
        raw.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_ten_sessions_on_one_mailbox_agree(mail_server: RunningServer) -> None:
    for i in range(12):
        deliver(mail_server, message(f"seed {i}"))
    views = [View(f"session {n}") for n in range(SESSIONS)]
    errors: list[str] = []
    start = threading.Barrier(SESSIONS)
    threads = [threading.Thread(target=_session, args=(mail_server, n, views, errors, start))
               for n in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    final = [v.flags_of for v in views]
    assert all(f == final[0] for f in final), "sessions disagree on flags after NOOP"
    assert all(v.uids == views[0].uids for v in views)
    seen_recent: dict[int, str] = {}
    for v in views:
        for uid in v.recent:
            assert uid not in seen_recent, (
                f"UID {uid} was \\Recent in {seen_recent[uid]} and in {v.name}")
            seen_recent[uid] = v.name
    assert seen_recent, "no session saw a \\Recent message"
