"""Several nodes on one PostgreSQL store share their DKIM keys and secrets through it: a second
node signs with the selector the first one published (mail sent through it verifies at a third
instance), rotation is seen by every node, and an earlier version's key files move into the
store once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from mailstead.cli.main import cli
from mailstead.mailsec import dkim
from mailstead.mailsec.dkim_keys import DkimKeyring, dkim_keyring
from mailstead.services.secrets import shared_secret
from tests import dnsworld
from tests.conftest import PG_DSN
from tests.delivery.conftest import Node
from tests.delivery.helpers import inbox_with, make_message, submit
from tests.trust.conftest import dkim_records, publish
from tests.trust.test_trust_e2e import _results

ALPHA, BETA = "alpha-k.test", "beta-k.test"


def test_second_node_signs_with_the_published_selector(
        make_node: Callable[..., Node], dns_world: dnsworld.DnsWorld,
        pg_schema: Callable[[], str], tmp_path: Path) -> None:
    shared = {"url": PG_DSN, "pg_schema": pg_schema(), "blob_dir": str(tmp_path / "blobs")}
    first = make_node("127.0.0.2", f"mx.{ALPHA}", ALPHA, users=("alice",), store=shared)
    # Published from the first node, before the second one ever started.
    published = dkim_records(first, ALPHA)
    second = make_node("127.0.0.8", f"mx2.{ALPHA}", ALPHA, store=shared, join=True)
    beta = make_node("127.0.0.3", f"mx.{BETA}", BETA, users=("bob",))
    publish(dns_world, ALPHA, "MX", f"10 mx.{ALPHA}.")
    publish(dns_world, f"mx.{ALPHA}", "A", first.ip)
    publish(dns_world, ALPHA, "TXT", f"v=spf1 ip4:{first.ip} ip4:{second.ip} -all")
    publish(dns_world, f"_dmarc.{ALPHA}", "TXT", "v=DMARC1; p=reject")
    for name, value in published:
        publish(dns_world, name, "TXT", value)
    for name in (BETA, f"mx.{BETA}"):
        publish(dns_world, name, "MX" if name == BETA else "A",
                f"10 mx.{BETA}." if name == BETA else beta.ip)

    # The second node has no key files of its own: it signs with the store's keys.
    assert not (second.data_dir / "dkim").exists()
    assert dkim_records(second, ALPHA) == published
    submit(second, f"alice@{ALPHA}", [f"bob@{BETA}"],
           make_message(f"alice@{ALPHA}", [f"bob@{BETA}"], "via node two"))
    [arrived] = inbox_with(beta, f"bob@{BETA}")
    results = _results(arrived, beta.hostname)
    assert results["dkim"] == ["pass", "pass"] and results["dmarc"] == ["pass"]

    # A rotation on one node is seen by the other (once its cache expires): both selectors
    # stay published during the overlap, and the new one signs.
    rotated = CliRunner().invoke(cli, ["dkim", "rotate", ALPHA, "--data", str(first.data_dir)])
    assert rotated.exit_code == 0, rotated.output
    keyring = dkim_keyring(second.server.services)
    keyring.ttl = 0
    keyring._cache.clear()
    new = rotated.output.split()[2]
    assert second.server.run(keyring.signing_key(ALPHA)).selector == new
    names = [name for name, _ in dkim_records(second, ALPHA)]
    assert len(names) == 4 and any(n.startswith(f"{new}-rsa.") for n in names)


def test_key_files_of_an_earlier_version_move_into_the_store(
        make_server: Callable[..., object], tmp_path: Path) -> None:
    from tests.conftest import RunningServer

    server = make_server()
    assert isinstance(server, RunningServer)
    old = [dkim.generate_keys(), dkim.generate_keys()]
    root = tmp_path / "old-dkim"
    dkim.write_key_files(root, "example.test", old[1].selector, old)
    keyring = DkimKeyring(server.services.store, root)
    moved = server.run(keyring.keyset("example.test"))
    assert moved.active == old[1].selector
    assert [k.selector for k in moved.keys] == [k.selector for k in old]
    # A node with other files (or none) now gets the store's keys, not its own.
    other = DkimKeyring(server.services.store, tmp_path / "elsewhere")
    assert server.run(other.signing_key("example.test")).rsa_pem == old[1].rsa_pem


def test_the_first_node_s_secret_is_everyone_s(make_server: Callable[..., object],
                                                tmp_path: Path) -> None:
    from tests.conftest import RunningServer

    server = make_server()
    assert isinstance(server, RunningServer)
    store = server.services.store
    earlier = tmp_path / "session.key"
    earlier.write_text("an-earlier-version-s-key\n")
    first = server.run(shared_secret(store, "test.secret", lambda: "made-by-one", earlier))
    second = server.run(shared_secret(store, "test.secret", lambda: "made-by-two", None))
    assert first == second == "an-earlier-version-s-key"
    assert server.run(shared_secret(store, "test.other", lambda: "fresh", None)) == "fresh"
