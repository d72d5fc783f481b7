"""Creating a data directory: config file, TLS certificate, store, first domain and account.

Used by ``mailstead init`` and by the test fixtures, so both set a server up the same way.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Any

from mailstead.auth.passwords import check_password_rules, hash_password
from mailstead.config import CONFIG_FILE, Config, deep_merge, render_toml
from mailstead.core.addresses import normalize_domain, parse_address
from mailstead.core.errors import Conflict, InvalidInput
from mailstead.net.tls import make_self_signed
from mailstead.store.factory import make_metadata_store
from mailstead.store.interfaces import Account, MetadataStore

DEMO_PASSWORD_FILE = "demo-password.txt"


def build_config(data_dir: Path, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, with ``overrides`` merged in, validated, bound to ``data_dir``."""
    raw = Config().model_dump(exclude={"data_dir"})
    cfg = Config.model_validate(deep_merge(raw, overrides or {}))
    cfg.data_dir = data_dir
    return cfg


def write_config(cfg: Config) -> Path:
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.data_dir / CONFIG_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render_toml(cfg), encoding="utf-8")
    tmp.replace(path)
    return path


def ensure_certificate(cfg: Config, copy_from: tuple[Path, Path] | None = None) -> None:
    """Self-signed certificate for the hostname unless one is configured and present."""
    cert, key = cfg.path(cfg.tls.cert), cfg.path(cfg.tls.key)
    if cert.exists() and key.exists():
        return
    if copy_from is not None:
        cert.parent.mkdir(parents=True, exist_ok=True)
        key.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(copy_from[0], cert)
        shutil.copyfile(copy_from[1], key)
        key.chmod(0o600)
        return
    make_self_signed(cfg.hostname, cert, key)


async def add_domain(store: MetadataStore, name: str, cfg: Config | None = None) -> str:
    """Adds the domain; with ``cfg``, also creates its DKIM keys (in the store)."""
    domain = normalize_domain(name)
    await store.add_domain(domain)
    if cfg is not None:
        from mailstead.mailsec.dkim_keys import DkimKeyring

        await DkimKeyring(store, cfg.path(cfg.trust.dkim_dir)).keyset(domain)
    return domain


async def add_user(
    store: MetadataStore,
    address: str,
    password: str,
    *,
    min_password_length: int = 8,
    quota_bytes: int = 0,
    quota_messages: int = 0,
    is_admin: bool = False,
) -> Account:
    """Validates the address, its domain and the password, then creates the account."""
    addr = parse_address(address)
    if addr.local != addr.without_tag().local:
        raise InvalidInput(f"{address}: '+' is reserved for plus-addressing")
    if await store.get_domain(addr.domain) is None:
        raise InvalidInput(f"unknown domain {addr.domain} (add it with 'mailstead domain add')")
    if await store.alias_destinations(addr.key):
        raise Conflict(f"{addr.key} is already an alias")
    check_password_rules(password, min_password_length)
    return await store.add_account(
        addr.key,
        hash_password(password),
        quota_bytes=quota_bytes,
        quota_messages=quota_messages,
        is_admin=is_admin,
    )


async def initialise(
    cfg: Config,
    *,
    demo_domain: str | None,
    demo_user: str = "demo",
    cert_from: tuple[Path, Path] | None = None,
) -> str | None:
    """Writes the config, the certificate, applies migrations and creates the demo domain and
    account. Returns the demo password (also saved, mode 0600, in the data dir), or None."""
    write_config(cfg)
    ensure_certificate(cfg, cert_from)
    store = make_metadata_store(cfg)
    await store.open()
    try:
        if demo_domain is None:
            return None
        domain = normalize_domain(demo_domain)
        if await store.get_domain(domain) is None:
            await add_domain(store, domain, cfg)
        address = f"{demo_user}@{domain}"
        if await store.get_account(address) is not None:
            return None
        password = secrets.token_urlsafe(12)
        await add_user(store, address, password, is_admin=True)
        pw_file = cfg.data_dir / DEMO_PASSWORD_FILE
        pw_file.write_text(f"{address} {password}\n", encoding="utf-8")
        pw_file.chmod(0o600)
        return password
    finally:
        await store.close()
