"""Builds the configured stores. The only place that picks a backend from the URL."""

from __future__ import annotations

from mailstead.config import Config
from mailstead.store.changes import ChangeBus
from mailstead.store.interfaces import BlobStore, MetadataStore


def make_metadata_store(cfg: Config, changes: ChangeBus | None = None) -> MetadataStore:
    bus = changes or ChangeBus()
    sqlite_path = cfg.sqlite_path
    if sqlite_path is not None:
        from mailstead.store.sqlite import SqliteStore

        return SqliteStore(sqlite_path, bus)
    from mailstead.store.postgres import PostgresStore

    return PostgresStore(cfg.store.url, bus, schema=cfg.store.pg_schema)


def make_blob_store(cfg: Config) -> BlobStore:
    from mailstead.store.blob_fs import FsBlobStore

    blobs = FsBlobStore(cfg.path(cfg.store.blob_dir))
    blobs.upgrade_layout()  # one stat once done; moves an earlier layout's files the first time
    return blobs
