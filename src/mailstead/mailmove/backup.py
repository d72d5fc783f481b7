"""Backup and restore of a data directory, and the store copies taken before schema upgrades.

A backup directory holds ``data/`` (the data directory as it would be restored: the SQLite store
copied with the sqlite3 backup API while the server runs, then the message files, the config,
TLS and DKIM keys), ``manifest.json`` (what was backed up) and ``SHA256SUMS`` (a line per file,
the format ``sha256sum -c`` reads). Message files are copied after the store snapshot: a file is
durable before the rows naming it commit, so every message the snapshot holds has its file.

PostgreSQL deployments get the files and keys; the database itself is dumped with pg_dump
(README: "Backup and restore").
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mailstead import __version__
from mailstead.config import Config
from mailstead.core.errors import InvalidInput, MailsteadError
from mailstead.store.announce import announce_dir
from mailstead.store.blob_fs import FsBlobStore
from mailstead.store.snapshot import backup_sqlite, current_version, referenced_blobs

DATA = "data"
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
UPGRADE_BACKUPS = "backups"  # in the data dir: store copies from before schema upgrades
CHUNK = 1 << 20


@dataclass
class BackupSummary:
    files: int
    messages: int
    bytes: int
    backend: str
    schema_version: int


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _must_be_empty(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise InvalidInput(f"{path} exists already and is not empty")


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def make_backup(cfg: Config, dest: Path) -> BackupSummary:
    """Copies the data directory of ``cfg`` to ``dest`` (blocking: run it in a thread)."""
    data_dir = cfg.data_dir.resolve()
    dest = dest.absolute()
    _must_be_empty(dest)
    if dest.resolve().is_relative_to(data_dir):
        raise InvalidInput("the backup must go outside the data directory")
    out = dest / DATA
    out.mkdir(parents=True)
    # (The running servers' announce sockets are named in run/: nothing to restore.)
    skipped: set[Path] = {data_dir / UPGRADE_BACKUPS, announce_dir(data_dir)}
    sqlite = cfg.sqlite_path
    version = current_version(cfg)
    if sqlite is not None:
        sqlite = sqlite.resolve()
        if not sqlite.is_relative_to(data_dir):
            raise InvalidInput(f"the store {sqlite} is outside the data directory: copy it "
                               "with the sqlite3 .backup command yourself")
        backup_sqlite(sqlite, out / sqlite.relative_to(data_dir))
        skipped |= {Path(f"{sqlite}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")}
    blob_root = cfg.path(cfg.store.blob_dir).resolve()
    skipped.add(blob_root)
    for path in sorted(_walk(data_dir, skipped)):
        _copy(path, out / path.relative_to(data_dir))
    messages = 0
    if blob_root.exists():  # after the store snapshot: see the module's docstring
        blob_out = out / blob_root.relative_to(data_dir) if blob_root.is_relative_to(data_dir) \
            else out / "blobs"
        for path in _walk(blob_root, set()):
            _copy(path, blob_out / path.relative_to(blob_root))
            messages += path.suffix == ".eml"
        if sqlite is not None:
            copy = FsBlobStore(blob_out)
            missing = [b for b in referenced_blobs(out / sqlite.relative_to(data_dir))
                       if not copy.exists(b)]
            if missing:
                raise MailsteadError(f"{len(missing)} message files went away during the "
                                     "backup (expunged meanwhile?): run it again")
    manifest = {
        "format": 1,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "mailstead": __version__,
        "backend": "sqlite" if sqlite is not None else "postgresql",
        "schema_version": version,
        "store_included": sqlite is not None,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    files = sorted(p for p in dest.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    lines = [f"{sha256_file(p)}  {p.relative_to(dest).as_posix()}\n" for p in files]
    (dest / SUMS).write_text("".join(lines))
    _fsync_tree(dest)
    return BackupSummary(len(files), messages, total, str(manifest["backend"]), version)


def _walk(root: Path, skipped: set[Path]) -> list[Path]:
    """Regular files under ``root``, leaving out ``skipped`` paths and temporary files."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skipped]
        for name in filenames:
            path = here / name
            if path not in skipped and not name.startswith(".") and path.is_file():
                found.append(path)
    return found


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def verify_backup(src: Path) -> dict[str, object]:
    """Checks every file of a backup against SHA256SUMS, and that no file was added; returns
    the manifest. InvalidInput (one line) when anything does not match."""
    sums = src / SUMS
    if not sums.is_file():
        raise InvalidInput(f"{src} is not a mailstead backup (no {SUMS})")
    listed: dict[str, str] = {}
    for number, line in enumerate(sums.read_text(errors="replace").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or ".." in Path(name).parts \
                or Path(name).is_absolute():
            raise InvalidInput(f"backup {src} is damaged: {SUMS} line {number} is not valid")
        listed[name] = digest
    present = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()} - {SUMS}
    for name in sorted(present - set(listed)):
        raise InvalidInput(f"backup {src} was tampered with: {name} is not in its {SUMS}")
    for name, digest in sorted(listed.items()):
        path = src / name
        if not path.is_file():
            raise InvalidInput(f"backup {src} is incomplete: {name} is missing")
        if sha256_file(path) != digest:
            raise InvalidInput(f"backup {src} was tampered with or damaged: {name} does not "
                               "match its SHA-256")
    if MANIFEST not in listed:
        raise InvalidInput(f"backup {src} has no {MANIFEST}")
    manifest: dict[str, object] = json.loads((src / MANIFEST).read_text())
    return manifest


def restore_backup(src: Path, data_dir: Path) -> dict[str, object]:
    """Verifies the backup first, then copies its data directory to ``data_dir`` (which must
    be new or empty); nothing is written when the check fails."""
    manifest = verify_backup(src)
    _must_be_empty(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    source = src / DATA
    for path in sorted(_walk(source, set())):
        _copy(path, data_dir / path.relative_to(source))
    _fsync_tree(data_dir)
    return manifest


# ---------------------------------------------------------------------------------------------
# Before a schema upgrade


def backup_before_upgrade(cfg: Config, version: int, keep: int) -> Path | None:
    """A copy of the SQLite store, taken before migrations from ``version`` run, in the data
    dir's backups/; only the newest ``keep`` of them stay. None when there is nothing to copy
    (no SQLite store yet, or ``keep`` is 0)."""
    sqlite = cfg.sqlite_path
    if sqlite is None or keep <= 0 or version == 0 or not sqlite.exists():
        return None
    folder = cfg.data_dir / UPGRADE_BACKUPS
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = folder / f"{sqlite.stem}-v{version}-{stamp}.sqlite3"
    backup_sqlite(sqlite, target)
    copies = sorted(folder.glob(f"{sqlite.stem}-v*-*.sqlite3"),
                    key=lambda p: (p.stat().st_mtime, p.name))
    for old in copies[:-keep]:
        old.unlink()
    return target
