"""The MetadataStore contract, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from mailstead.core.errors import Conflict, NotFound, QuotaExceeded
from mailstead.store.interfaces import (
    DEFAULT_MAILBOXES,
    Delivery,
    Envelope,
    MetadataStore,
    NewMessage,
    SystemFlag,
)
from tests.store.helpers import (
    WHEN,
    blob,
    deliver,
    inbox,
    make_account,
    new_message,
    queue_entry,
)

# -- domains -----------------------------------------------------------------------------------


async def test_domains(store: MetadataStore) -> None:
    d = await store.add_domain("Example.TEST")
    assert d.name == "example.test"
    assert d.created.tzinfo is not None
    await store.add_domain("b.example")
    assert await store.get_domain("EXAMPLE.test") == d
    assert await store.get_domain("nope.example") is None
    assert [x.name for x in await store.list_domains()] == ["b.example", "example.test"]
    with pytest.raises(Conflict):
        await store.add_domain("example.test")
    await store.remove_domain("b.example")
    assert [x.name for x in await store.list_domains()] == ["example.test"]
    with pytest.raises(NotFound):
        await store.remove_domain("b.example")


async def test_remove_domain_refused_while_used(store: MetadataStore) -> None:
    await make_account(store, "alice@example.test")
    with pytest.raises(Conflict):
        await store.remove_domain("example.test")
    await store.add_domain("alias.example")
    await store.add_alias("info@alias.example", "alice@example.test")
    with pytest.raises(Conflict):
        await store.remove_domain("alias.example")
    await store.remove_alias("info@alias.example")
    await store.remove_domain("alias.example")


# -- accounts ----------------------------------------------------------------------------------


async def test_account_gets_default_mailboxes(store: MetadataStore) -> None:
    a = await make_account(store, "Alice@Example.test", quota_bytes=1000, quota_messages=5)
    assert (a.address, a.domain, a.quota_bytes, a.quota_messages) == (
        "alice@example.test",
        "example.test",
        1000,
        5,
    )
    assert a.is_admin is False
    boxes = {m.name: m for m in await store.list_mailboxes(a.id)}
    assert {name: boxes[name].special_use for name, _ in DEFAULT_MAILBOXES} == dict(
        DEFAULT_MAILBOXES
    )
    assert len({m.uidvalidity for m in boxes.values()}) == len(boxes)
    assert all(m.uidnext == 1 for m in boxes.values())
    assert set(await store.list_subscriptions(a.id)) == set(boxes)
    assert await store.get_account("ALICE@example.test") == a
    assert await store.get_account_by_id(a.id) == a
    assert await store.get_account_by_id(a.id + 100) is None


async def test_account_errors(store: MetadataStore) -> None:
    await make_account(store)
    with pytest.raises(Conflict):
        await store.add_account("ALICE@example.test", "h")
    with pytest.raises(NotFound):
        await store.add_account("carol@unknown.example", "h")
    for call in (
        store.set_password("nobody@example.test", "h"),
        store.set_quota("nobody@example.test", 1, 1),
        store.remove_account("nobody@example.test"),
    ):
        with pytest.raises(NotFound):
            await call


async def test_list_update_and_remove_accounts(store: MetadataStore) -> None:
    alice = await make_account(store, "alice@example.test")
    await make_account(store, "zed@b.example")
    await store.add_account("admin@b.example", "h", is_admin=True)
    assert [a.address for a in await store.list_accounts()] == [
        "admin@b.example",
        "alice@example.test",
        "zed@b.example",
    ]
    assert [a.address for a in await store.list_accounts("b.example")] == [
        "admin@b.example",
        "zed@b.example",
    ]
    assert (await store.get_account("admin@b.example")).is_admin  # type: ignore[union-attr]
    await store.set_password("alice@example.test", "new-hash")
    await store.set_quota("alice@example.test", 5000, 10)
    got = await store.get_account("alice@example.test")
    assert got is not None
    assert (got.password_hash, got.quota_bytes, got.quota_messages) == ("new-hash", 5000, 10)
    assert await store.remove_account("alice@example.test") == []
    assert await store.get_account("alice@example.test") is None
    assert await store.list_mailboxes(alice.id) == []


async def test_remove_account_returns_blobs_only_it_used(store: MetadataStore) -> None:
    alice = await make_account(store, "alice@example.test")
    bob = await make_account(store, "bob@example.test")
    await deliver(store, await inbox(store, alice), 1)
    await deliver(store, await inbox(store, alice), 2)
    await deliver(store, await inbox(store, alice, "Sent"), 2)
    await deliver(store, await inbox(store, bob), 1)  # shared content stays in use
    assert await store.remove_account("alice@example.test") == [blob(2)]
    assert not await store.blob_unused(blob(1))
    assert await store.blob_unused(blob(2))


# -- aliases -----------------------------------------------------------------------------------


async def test_aliases(store: MetadataStore) -> None:
    await store.add_domain("example.test")
    await store.add_domain("b.example")
    a = await store.add_alias("Team@example.test", "alice@example.test")
    assert (a.source, a.destination) == ("team@example.test", "alice@example.test")
    await store.add_alias("team@example.test", "bob@elsewhere.example")
    await store.add_alias("@b.example", "alice@example.test")
    with pytest.raises(Conflict):
        await store.add_alias("team@example.test", "alice@example.test")
    with pytest.raises(NotFound):
        await store.add_alias("x@unknown.example", "alice@example.test")
    assert await store.alias_destinations("TEAM@example.test") == [
        "alice@example.test",
        "bob@elsewhere.example",
    ]
    assert await store.alias_destinations("@b.example") == ["alice@example.test"]
    assert [(x.source, x.destination) for x in await store.list_aliases("b.example")] == [
        ("@b.example", "alice@example.test")
    ]
    assert len(await store.list_aliases()) == 3
    assert await store.remove_alias("team@example.test", "bob@elsewhere.example") == 1
    assert await store.alias_destinations("team@example.test") == ["alice@example.test"]
    await store.add_alias("team@example.test", "carol@example.test")
    assert await store.remove_alias("team@example.test") == 2
    assert await store.alias_destinations("team@example.test") == []
    with pytest.raises(NotFound):
        await store.remove_alias("team@example.test")


# -- mailboxes ---------------------------------------------------------------------------------


async def test_create_and_subscribe_mailboxes(store: MetadataStore) -> None:
    a = await make_account(store)
    box = await store.create_mailbox(a.id, "Projects/2024", "\\Archive")
    assert (box.name, box.special_use, box.uidnext, box.highestmodseq) == (
        "Projects/2024",
        "\\Archive",
        1,
        1,
    )
    assert await store.get_mailbox(a.id, "Projects/2024") == box
    assert await store.get_mailbox_by_id(box.id) == box
    assert await store.get_mailbox(a.id, "projects/2024") is None  # names are case-sensitive
    with pytest.raises(Conflict):
        await store.create_mailbox(a.id, "Projects/2024")
    with pytest.raises(NotFound):
        await store.create_mailbox(a.id + 99, "X")
    await store.set_subscribed(a.id, "Projects/2024", False)
    assert "Projects/2024" not in await store.list_subscriptions(a.id)
    with pytest.raises(NotFound):
        await store.set_subscribed(a.id, "Missing", True)


async def test_subscriptions_are_names_that_outlive_their_mailbox(store: MetadataStore) -> None:
    """RFC 9051 6.3.7: deleting a mailbox keeps its name subscribed; unsubscribing a gone name
    works; renaming carries the subscriptions of the mailbox and its children along. Creating
    a mailbox subscribes nothing (RFC 3501 6.3.3); a new account's folders start subscribed."""
    a = await make_account(store)
    assert {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"} == set(
        await store.list_subscriptions(a.id))
    await store.create_mailbox(a.id, "Lists/Python")
    assert "Lists/Python" not in await store.list_subscriptions(a.id)
    await store.set_subscribed(a.id, "Lists/Python", True)
    await store.delete_mailbox(a.id, "Lists/Python")
    assert "Lists/Python" in await store.list_subscriptions(a.id)
    await store.set_subscribed(a.id, "Lists/Python", False)
    assert "Lists/Python" not in await store.list_subscriptions(a.id)
    await store.create_mailbox(a.id, "Work")
    await store.create_mailbox(a.id, "Work/Plans")
    await store.set_subscribed(a.id, "Work/Plans", True)
    await store.rename_mailbox(a.id, "Work", "Job")
    names = await store.list_subscriptions(a.id)
    assert "Job/Plans" in names and "Job" not in names and not any(
        n.startswith("Work") for n in names)


async def test_maildrop_locks_are_leases_with_one_holder(store: MetadataStore) -> None:
    """The POP3 lock: one owner at a time, renewable by its holder, free again when given back
    or when its lease has run out; a given-back lock of another owner stays."""
    a = await make_account(store)
    box = await inbox(store, a)
    assert await store.lock_maildrop(box.id, "node-a:1", 60)
    assert not await store.lock_maildrop(box.id, "node-b:1", 60)
    assert await store.lock_maildrop(box.id, "node-a:1", 60)  # renewed by its holder
    await store.unlock_maildrop(box.id, "node-b:1")  # not b's: nothing happens
    assert not await store.lock_maildrop(box.id, "node-b:1", 60)
    await store.unlock_maildrop(box.id, "node-a:1")
    assert await store.lock_maildrop(box.id, "node-b:1", 0.05)
    assert not await store.lock_maildrop(box.id, "node-a:1", 60)
    await asyncio.sleep(0.1)  # b's lease runs out: its node died without unlocking
    assert await store.lock_maildrop(box.id, "node-a:1", 60)


async def test_recreated_mailbox_gets_new_uidvalidity(store: MetadataStore) -> None:
    a = await make_account(store)
    first = await store.create_mailbox(a.id, "Box")
    await store.delete_mailbox(a.id, "Box")
    second = await store.create_mailbox(a.id, "Box")
    assert second.uidvalidity > first.uidvalidity


async def test_rename_mailbox_with_children(store: MetadataStore) -> None:
    a = await make_account(store)
    for name in ("a", "a/x", "a/x/y", "ab"):
        await store.create_mailbox(a.id, name)
    child = await inbox(store, a, "a/x")
    msg = await deliver(store, child)
    await store.rename_mailbox(a.id, "a", "b")
    names = sorted(m.name for m in await store.list_mailboxes(a.id))
    assert [n for n in names if n[0] in "ab"] == ["ab", "b", "b/x", "b/x/y"]
    moved = await inbox(store, a, "b/x")
    assert (moved.id, moved.uidvalidity) == (child.id, child.uidvalidity)
    assert [m.blob_id for m in await store.get_messages(moved.id)] == [msg.blob_id]
    with pytest.raises(Conflict):
        await store.rename_mailbox(a.id, "b", "ab")
    with pytest.raises(NotFound):
        await store.rename_mailbox(a.id, "a", "c")


async def test_delete_mailbox_returns_unused_blobs(store: MetadataStore) -> None:
    a = await make_account(store)
    box = await store.create_mailbox(a.id, "Old")
    await deliver(store, box, 1, size=10)
    await deliver(store, box, 2, size=20)
    await deliver(store, await inbox(store, a), 2, size=20)
    assert await store.quota_usage(a.id) == (50, 3)
    assert await store.delete_mailbox(a.id, "Old") == [blob(1)]
    assert await store.get_mailbox(a.id, "Old") is None
    assert await store.quota_usage(a.id) == (20, 1)
    with pytest.raises(NotFound):
        await store.delete_mailbox(a.id, "Old")


async def test_mailbox_status_and_recent(store: MetadataStore) -> None:
    a = await make_account(store)
    box = await inbox(store, a)
    await deliver(store, box, 1, size=10, flags=SystemFlag.SEEN)
    await deliver(store, box, 2, size=20, flags=SystemFlag.DELETED)
    await deliver(store, box, 3, size=30)
    status = await store.mailbox_status(box.id)
    assert (status.messages, status.unseen, status.recent, status.size, status.deleted) == (
        3,
        2,
        3,
        60,
        1,
    )
    assert (status.uidnext, status.uidvalidity) == (4, box.uidvalidity)
    assert await store.claim_recent(box.id) == 1
    assert await store.claim_recent(box.id) == 4  # nothing new since
    await deliver(store, box, 4)
    assert (await store.mailbox_status(box.id)).recent == 1
    assert await store.claim_recent(box.id) == 4
    with pytest.raises(NotFound):
        await store.mailbox_status(box.id + 999)


# -- messages ----------------------------------------------------------------------------------


async def test_store_message_to_several_mailboxes(store: MetadataStore) -> None:
    alice = await make_account(store, "alice@example.test")
    bob = await make_account(store, "bob@example.test")
    env = Envelope(
        subject="Hello ✓",
        from_="Carol <carol@example.org>",
        to="alice@example.test",
        cc="bob@example.test",
        date=datetime(2024, 5, 17, 11, 0, tzinfo=UTC),
        message_id="<1@example.org>",
        in_reply_to="<0@example.org>",
    )
    m = NewMessage(
        blob_id=blob(1),
        size=321,
        internal_date=WHEN,
        flags=SystemFlag.FLAGGED,
        keywords=frozenset({"$Forwarded", "work"}),
        envelope=env,
    )
    boxes = [await inbox(store, alice), await inbox(store, bob), await inbox(store, alice, "Sent")]
    metas = await store.store_message([Delivery(b.id, m) for b in boxes])
    assert [x.mailbox_id for x in metas] == [b.id for b in boxes]
    assert all(x.uid == 1 and x.modseq > 1 for x in metas)
    [row] = await store.get_messages(boxes[0].id)
    assert row == metas[0]
    assert (row.envelope, row.keywords, row.flags, row.internal_date) == (
        env,
        frozenset({"$Forwarded", "work"}),
        SystemFlag.FLAGGED,
        WHEN,
    )
    assert await store.quota_usage(alice.id) == (642, 2)
    with pytest.raises(NotFound):
        await store.store_message([Delivery(boxes[0].id + 999, m)])
    assert await store.quota_usage(alice.id) == (642, 2)


async def test_uid_and_modseq_only_grow(store: MetadataStore) -> None:
    box = await inbox(store, await make_account(store))
    seen_modseq = box.highestmodseq
    for n in range(1, 6):
        meta = await deliver(store, box, n)
        assert meta.uid == n
        assert meta.modseq > seen_modseq
        seen_modseq = meta.modseq
    await store.expunge(box.id, [5])
    meta = await deliver(store, box, 6)
    assert meta.uid == 6  # UIDs are never reused (RFC 3501 2.3.1.1)
    after = await store.get_mailbox_by_id(box.id)
    assert after is not None
    assert (after.uidnext, after.highestmodseq) == (7, meta.modseq)


async def test_list_flags_and_get_messages(store: MetadataStore) -> None:
    box = await inbox(store, await make_account(store))
    for n in range(1, 701):
        await deliver(store, box, n, flags=SystemFlag.SEEN if n % 2 else 0)
    flags = await store.list_flags(box.id)
    assert [f.uid for f in flags] == list(range(1, 701))
    assert [f.flags for f in flags[:2]] == [SystemFlag.SEEN, 0]
    assert [m.uid for m in await store.get_messages(box.id, [3, 1, 999])] == [1, 3]
    many = list(range(2, 701, 2))  # more than one IN list's worth
    assert [m.uid for m in await store.get_messages(box.id, many)] == many
    assert len(await store.get_messages(box.id)) == 700
    assert await store.get_messages(box.id, []) == []


async def test_update_flags_modes(store: MetadataStore) -> None:
    box = await inbox(store, await make_account(store))
    for n in range(1, 4):
        await deliver(store, box, n, keywords=frozenset({"old"}))
    res = await store.update_flags(
        box.id, [1, 2], "add", SystemFlag.SEEN | SystemFlag.FLAGGED, frozenset({"$Label1"})
    )
    assert [c.uid for c in res.changed] == [1, 2]
    assert all(c.modseq == res.highestmodseq for c in res.changed)
    assert res.changed[0].keywords == frozenset({"old", "$Label1"})
    assert res.failed_uids == []
    res2 = await store.update_flags(
        box.id, [1, 3], "remove", SystemFlag.FLAGGED, frozenset({"old"})
    )
    assert res2.highestmodseq > res.highestmodseq
    assert {c.uid: (c.flags, c.keywords) for c in res2.changed} == {
        1: (SystemFlag.SEEN, frozenset({"$Label1"})),
        3: (0, frozenset()),
    }
    res3 = await store.update_flags(box.id, [2], "replace", SystemFlag.DRAFT, frozenset({"x"}))
    assert [(c.flags, c.keywords) for c in res3.changed] == [(SystemFlag.DRAFT, frozenset({"x"}))]
    # A STORE that changes nothing gives no new MODSEQ.
    res4 = await store.update_flags(box.id, [2], "add", SystemFlag.DRAFT)
    assert (res4.changed, res4.highestmodseq) == ([], res3.highestmodseq)
    states = {f.uid: f for f in await store.list_flags(box.id)}
    assert states[2].flags == SystemFlag.DRAFT and states[2].modseq == res3.highestmodseq
    with pytest.raises(NotFound):
        await store.update_flags(box.id + 999, [1], "add", SystemFlag.SEEN)


async def test_update_flags_unchanged_since(store: MetadataStore) -> None:
    box = await inbox(store, await make_account(store))
    m1 = await deliver(store, box, 1)
    await deliver(store, box, 2)
    touched = await store.update_flags(box.id, [2], "add", SystemFlag.SEEN)
    # RFC 7162 3.1.3: message 2 changed after m1.modseq, so it fails; message 1 is stored.
    res = await store.update_flags(
        box.id, [1, 2], "add", SystemFlag.FLAGGED, unchanged_since=m1.modseq
    )
    assert res.failed_uids == [2]
    assert [c.uid for c in res.changed] == [1]
    states = {f.uid: f for f in await store.list_flags(box.id)}
    assert states[2].flags == SystemFlag.SEEN and states[2].modseq == touched.highestmodseq


async def test_expunge_and_changes_since(store: MetadataStore) -> None:
    a = await make_account(store)
    box = await inbox(store, a)
    for n in range(1, 6):
        await deliver(store, box, n, size=10)
    base = (await store.mailbox_status(box.id)).highestmodseq
    await store.update_flags(box.id, [2, 4], "add", SystemFlag.DELETED)
    await store.update_flags(box.id, [1], "add", SystemFlag.SEEN)
    assert await store.expunge(box.id) == [2, 4]
    assert await store.expunge(box.id, [5, 99]) == [5]
    assert await store.expunge(box.id, [5]) == []
    assert [f.uid for f in await store.list_flags(box.id)] == [1, 3]
    assert await store.quota_usage(a.id) == (20, 2)
    changes = await store.changes_since(box.id, base)
    assert [c.uid for c in changes.changed] == [1]
    assert changes.vanished == [2, 4, 5]
    assert changes.highestmodseq == (await store.mailbox_status(box.id)).highestmodseq
    latest = await store.changes_since(box.id, changes.highestmodseq)
    assert (latest.changed, latest.vanished) == ([], [])
    everything = await store.changes_since(box.id, 0)
    assert [c.uid for c in everything.changed] == [1, 3]
    with pytest.raises(NotFound):
        await store.changes_since(box.id + 999, 0)


async def test_expunged_blobs_are_reaped(store: MetadataStore) -> None:
    a = await make_account(store)
    box = await inbox(store, a)
    await deliver(store, box, 1)
    await deliver(store, box, 2)
    await deliver(store, await inbox(store, a, "Sent"), 2)
    await store.expunge(box.id, [1, 2])
    assert await store.blob_unused(blob(1))
    assert not await store.blob_unused(blob(2))
    assert [b async for b in store.all_blob_ids()] == [blob(2)]
    assert await store.reap_blobs() == [blob(1)]
    assert await store.reap_blobs() == []


async def test_blob_reused_before_reaping_is_kept(store: MetadataStore) -> None:
    box = await inbox(store, await make_account(store))
    await deliver(store, box, 1)
    await store.expunge(box.id, [1])
    await deliver(store, box, 1)  # the same content arrives again
    assert await store.reap_blobs() == []
    assert not await store.blob_unused(blob(1))


async def test_copy_and_move(store: MetadataStore) -> None:
    a = await make_account(store)
    src, dst = await inbox(store, a), await inbox(store, a, "Archive")
    await deliver(store, src, 10)
    await deliver(store, dst, 11)
    for n in range(1, 4):
        await deliver(store, src, n, size=10, flags=SystemFlag.SEEN, keywords=frozenset({"k"}))
    copied = await store.copy_messages(src.id, [2, 3, 4, 99], dst.id)
    assert copied.uidvalidity == dst.uidvalidity
    assert copied.pairs == [(2, 2), (3, 3), (4, 4)]
    dst_rows = {m.uid: m for m in await store.get_messages(dst.id)}
    assert dst_rows[2].blob_id == blob(1) and dst_rows[2].flags == SystemFlag.SEEN
    assert dst_rows[2].keywords == frozenset({"k"})
    usage = await store.quota_usage(a.id)
    moved = await store.copy_messages(src.id, [2], dst.id, move=True)
    assert moved.pairs == [(2, 5)]
    assert [m.uid for m in await store.get_messages(src.id)] == [1, 3, 4]
    assert await store.quota_usage(a.id) == usage  # a move inside an account costs nothing
    changes = await store.changes_since(src.id, 0)
    assert changes.vanished == [2]
    assert (await store.copy_messages(src.id, [42], dst.id)).pairs == []
    # Every copy holds a reference: blobs 2 and 3 are still in INBOX; blob 1 moved away whole.
    assert await store.delete_mailbox(a.id, "Archive") == sorted([blob(1), blob(11)])


async def test_move_between_accounts_moves_usage(store: MetadataStore) -> None:
    alice = await make_account(store, "alice@example.test")
    bob = await make_account(store, "bob@example.test")
    await deliver(store, await inbox(store, alice), 1, size=70)
    await store.copy_messages(
        (await inbox(store, alice)).id, [1], (await inbox(store, bob)).id, move=True
    )
    assert await store.quota_usage(alice.id) == (0, 0)
    assert await store.quota_usage(bob.id) == (70, 1)


async def test_quota_refusal_writes_nothing(store: MetadataStore) -> None:
    alice = await make_account(store, "alice@example.test", quota_bytes=250)
    bob = await make_account(store, "bob@example.test", quota_messages=2)
    a_box, b_box = await inbox(store, alice), await inbox(store, bob)
    await deliver(store, a_box, 1, size=200)
    before = (await store.mailbox_status(a_box.id), await store.mailbox_status(b_box.id))
    m = new_message(2, size=100)
    with pytest.raises(QuotaExceeded):
        await store.store_message(
            [Delivery(b_box.id, m), Delivery(a_box.id, m)], queue_entry("QX", 2)
        )
    after = (await store.mailbox_status(a_box.id), await store.mailbox_status(b_box.id))
    assert after == before  # not even bob's copy, nor a UID, nor the queue entry
    assert await store.quota_usage(bob.id) == (0, 0)
    assert await store.get_queue_entry("QX") is None
    assert await store.blob_unused(blob(2))
    await deliver(store, b_box, 3)
    await deliver(store, b_box, 4)
    with pytest.raises(QuotaExceeded):
        await deliver(store, b_box, 5)
    assert (await store.mailbox_status(b_box.id)).messages == 2
    # COPY into a full account is refused as well (RFC 9208 [OVERQUOTA]).
    with pytest.raises(QuotaExceeded):
        await store.copy_messages(a_box.id, [1], b_box.id)
    await store.set_quota("bob@example.test", 0, 0)  # 0 = unlimited
    await deliver(store, b_box, 5)


async def test_timestamps_are_utc(store: MetadataStore) -> None:
    box = await inbox(store, await make_account(store))
    local = datetime(2024, 1, 1, 12, 0, tzinfo=UTC).astimezone(timezone(timedelta(hours=5)))
    [meta] = await store.store_message(
        [Delivery(box.id, NewMessage(blob_id=blob(1), size=1, internal_date=local))]
    )
    [row] = await store.get_messages(box.id)
    assert row.internal_date == local and row.internal_date.utcoffset() == timedelta(0)
    assert meta.internal_date == local


# -- queue -------------------------------------------------------------------------------------


async def test_queue_entries(store: MetadataStore) -> None:
    a = await make_account(store)
    entry = queue_entry("Q1", account_id=a.id, envid="env1", ret="HDRS", requiretls=True)
    await store.enqueue(entry)
    with pytest.raises(Conflict):
        await store.enqueue(entry)
    assert await store.get_queue_entry("Q1") == entry
    assert await store.get_queue_entry("nope") is None
    assert not await store.blob_unused(blob(9))
    entry.recipients[0].status = "failed"
    entry.recipients[0].last_reply = "550 5.1.1 no such user"
    entry.attempts = 2
    entry.state = "done"
    entry.delay_notified = True
    entry.next_attempt = WHEN + timedelta(minutes=30)
    await store.update_queue_entry(entry)
    assert await store.get_queue_entry("Q1") == entry
    assert await store.list_queue() == []
    assert await store.list_queue(include_done=True) == [entry]
    assert await store.delete_queue_entry("Q1") == [blob(9)]
    assert await store.delete_queue_entry("Q1") == []
    with pytest.raises(NotFound):
        await store.update_queue_entry(entry)


async def test_store_message_with_queue_entry(store: MetadataStore) -> None:
    a = await make_account(store)
    m = new_message(9)
    await store.store_message([Delivery((await inbox(store, a, "Sent")).id, m)], queue_entry("Q2"))
    assert (await store.get_queue_entry("Q2")) is not None
    assert await store.delete_queue_entry("Q2") == []  # the Sent copy still uses the blob
    await store.store_message([], queue_entry("Q3", 8))
    assert [e.id for e in await store.list_queue()] == ["Q3"]


async def test_store_message_runs_before_first(store: MetadataStore) -> None:
    """``before`` (the message file's flush) runs before the rows commit; when it fails the
    call fails with its error and nothing is written, while the writes around it go on."""
    a = await make_account(store)
    box = await inbox(store, a)
    calls: list[str] = []

    def flush() -> None:
        calls.append("flush")

    def broken() -> None:
        raise OSError(5, "flush failed")

    meta = (await store.store_message([Delivery(box.id, new_message(1))], before=flush))[0]
    assert calls == ["flush"] and meta.uid == 1
    _meta, _first = await store.append_claiming_recent(Delivery(box.id, new_message(2)),
                                                       before=flush)
    assert calls == ["flush", "flush"]
    results = await asyncio.gather(
        store.store_message([Delivery(box.id, new_message(3))], before=broken),
        store.store_message([Delivery(box.id, new_message(4))], before=flush),
        return_exceptions=True,
    )
    assert isinstance(results[0], OSError)
    assert not isinstance(results[1], BaseException)
    assert [s.uid for s in await store.list_flags(box.id)] == [1, 2, results[1][0].uid]


async def test_claim_due_leases(store: MetadataStore) -> None:
    now = datetime.now(UTC)
    await store.enqueue(queue_entry("due1", 1, next_attempt=now - timedelta(minutes=1)))
    await store.enqueue(queue_entry("due2", 2, next_attempt=now - timedelta(seconds=1)))
    await store.enqueue(queue_entry("later", 3, next_attempt=now + timedelta(hours=1)))
    await store.enqueue(queue_entry("done", 4, next_attempt=now, state="done"))
    first = await store.claim_due(now, "node-a", 60, 10)
    assert [e.id for e in first] == ["due1", "due2"]
    assert all(e.lease_owner == "node-a" and e.lease_until is not None for e in first)
    assert first[0].lease_until == now + timedelta(seconds=60)
    assert await store.claim_due(now, "node-b", 60, 10) == []  # leased
    later = now + timedelta(seconds=61)  # the lease ran out (node-a died)
    assert [e.id for e in await store.claim_due(later, "node-b", 60, 1)] == ["due1"]
    assert [e.id for e in await store.claim_due(later, "node-b", 60, 5)] == ["due2"]


async def test_settled_recipients_stay_settled_whoever_writes_last(
        store: MetadataStore) -> None:
    """A worker holding an entry and a recall (or a retry) at the same moment: neither can
    put back to pending what the other settled, and the recall leaves the lease alone."""
    from mailstead.store.interfaces import QueueRecipient

    now = datetime.now(UTC)
    recipients = [QueueRecipient("a@remote.example"), QueueRecipient("b@remote.example")]
    await store.enqueue(queue_entry("race", 5, recipients=recipients,
                                    next_attempt=now - timedelta(seconds=1)))
    [held] = await store.claim_due(now, "worker", 60, 1)  # the worker's copy, all pending
    recalled = await store.recall_pending("race", now, "recalled by the sender")
    assert [r.status for r in recalled.recipients] == ["recalled", "recalled"]
    assert recalled.state == "done"
    stored = await store.get_queue_entry("race")
    assert stored is not None and stored.lease_owner == "worker"  # still the worker's
    # The worker delivered to a just before the recall and records it from its stale copy.
    held.recipients[0].status = "delivered"
    held.lease_owner, held.lease_until = "", None
    await store.update_queue_entry(held)
    final = await store.get_queue_entry("race")
    assert final is not None
    assert [r.status for r in final.recipients] == ["delivered", "recalled"]
    assert final.state == "done" and final.lease_owner == ""
    # Nothing is left to make due, and nothing goes back to pending.
    assert not await store.make_due("race", now)
    with pytest.raises(NotFound):
        await store.recall_pending("nope", now, "x")


async def test_make_due_moves_only_the_attempt_time(store: MetadataStore) -> None:
    now = datetime.now(UTC)
    later = now + timedelta(hours=1)
    await store.enqueue(queue_entry("wait", 6, next_attempt=later, attempts=3))
    assert await store.make_due("wait", now)
    entry = await store.get_queue_entry("wait")
    assert entry is not None and (entry.next_attempt, entry.attempts) == (now, 3)
    assert not await store.make_due("missing", now)


# -- change feed -------------------------------------------------------------------------------


async def test_changes_are_published(store: MetadataStore) -> None:
    a = await make_account(store)
    box = await inbox(store, a)
    changes = store.changes  # type: ignore[attr-defined]
    with changes.watch(box.id) as watch:
        await deliver(store, box)
        assert await watch.wait(5)
        await store.update_flags(box.id, [1], "add", SystemFlag.SEEN)
        assert await watch.wait(5)
        await store.expunge(box.id, [1])
        assert await watch.wait(5)
        await store.claim_recent(box.id)  # changes nothing anyone sees
        assert not await watch.wait(0.05)


async def test_version_1_subscription_flags_become_subscriptions(tmp_path: Path) -> None:
    """A store made before migration 0002 keeps exactly its subscribed mailboxes."""
    import sqlite3

    from mailstead.store.changes import ChangeBus
    from mailstead.store.sql_base import load_migrations, split_statements
    from mailstead.store.sqlite import SqliteStore

    path = tmp_path / "meta.db"
    conn = sqlite3.connect(path, isolation_level=None)
    [(_, first)] = [m for m in load_migrations() if m[0] == 1]
    for statement in split_statements(first, "sqlite"):
        conn.execute(statement)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied BIGINT)")
    conn.execute("INSERT INTO schema_version VALUES (1, 0)")
    conn.execute("INSERT INTO domains (name, created) VALUES ('example.test', 0)")
    conn.execute("INSERT INTO accounts (address, domain_id, password_hash, created) "
                 "VALUES ('alice@example.test', 1, 'hash', 0)")
    conn.execute("INSERT INTO mailboxes (account_id, name, uidvalidity, subscribed) VALUES "
                 "(1, 'INBOX', 1, TRUE), (1, 'Old news', 2, FALSE)")
    conn.close()
    store = SqliteStore(path, ChangeBus())
    await store.open()
    try:
        assert await store.list_subscriptions(1) == ["INBOX"]
        assert {b.name for b in await store.list_mailboxes(1)} == {"INBOX", "Old news"}
    finally:
        await store.close()


async def test_sort_fields(store: MetadataStore) -> None:
    """SORT/THREAD read only the columns they need; a row without envelope is flagged bare."""
    alice = await make_account(store, "sorter@example.test")
    box = await inbox(store, alice)
    env = Envelope(subject="Re: x", from_="A <a@example.org>", to="b@example.org",
                   cc="c@example.org", date=datetime(2024, 5, 17, 11, 0, tzinfo=UTC),
                   message_id="<1@x>", in_reply_to="<0@x>", references="<0@x>")
    with_env = NewMessage(blob_id=blob(1), size=321, internal_date=WHEN, envelope=env)
    bare = NewMessage(blob_id=blob(2), size=5, internal_date=WHEN)
    await store.store_message([Delivery(box.id, with_env), Delivery(box.id, bare)])
    full, plain = await store.sort_fields(box.id)
    assert (full.uid, full.size, full.subject, full.from_, full.to, full.cc) == (
        1, 321, "Re: x", "A <a@example.org>", "b@example.org", "c@example.org")
    assert full.date == int(env.date.timestamp()) * 1_000_000  # type: ignore[union-attr]
    assert (full.message_id, full.in_reply_to, full.references) == ("<1@x>", "<0@x>", "<0@x>")
    assert full.internal_date == int(WHEN.timestamp() * 1_000_000)
    assert not full.bare and plain.bare and plain.references is None
    [narrow, _] = await store.sort_fields(box.id, {"subject"})
    assert (narrow.subject, narrow.from_, narrow.date, narrow.size) == ("Re: x", "", None, 0)
    assert [r.uid for r in await store.sort_fields(box.id, (), after_uid=1)] == [2]
    assert [r.uid for r in await store.sort_fields(box.id, (), limit=1)] == [1]
    with pytest.raises(ValueError):
        await store.sort_fields(box.id, {"env_subject; DROP TABLE messages"})
