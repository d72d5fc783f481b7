-- mailstead schema, version 1. One file for both dialects: @ID@ becomes the auto-numbered key of
-- the dialect (SQLite: INTEGER PRIMARY KEY, PostgreSQL: an identity column). Times are BIGINT
-- microseconds since the Unix epoch (UTC), so both dialects compare and return them the same way.
-- Statements end with ';' at the end of a line (the runner splits on that).

CREATE TABLE domains (
    id @ID@,
    name TEXT NOT NULL UNIQUE,
    created BIGINT NOT NULL
);

CREATE TABLE accounts (
    id @ID@,
    address TEXT NOT NULL UNIQUE,
    domain_id BIGINT NOT NULL REFERENCES domains (id),
    password_hash TEXT NOT NULL,
    quota_bytes BIGINT NOT NULL DEFAULT 0,
    quota_messages BIGINT NOT NULL DEFAULT 0,
    -- usage kept by every operation that adds or removes messages, so the quota check is O(1)
    used_bytes BIGINT NOT NULL DEFAULT 0,
    used_messages BIGINT NOT NULL DEFAULT 0,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    created BIGINT NOT NULL
);
CREATE INDEX accounts_domain ON accounts (domain_id);

CREATE TABLE aliases (
    id @ID@,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    domain_id BIGINT NOT NULL REFERENCES domains (id),
    UNIQUE (source, destination)
);
CREATE INDEX aliases_domain ON aliases (domain_id);

CREATE TABLE mailboxes (
    id @ID@,
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    special_use TEXT,
    uidvalidity BIGINT NOT NULL,
    uidnext BIGINT NOT NULL DEFAULT 1,
    highestmodseq BIGINT NOT NULL DEFAULT 1,
    subscribed BOOLEAN NOT NULL DEFAULT TRUE,
    first_recent_uid BIGINT NOT NULL DEFAULT 1,
    UNIQUE (account_id, name)
);

CREATE TABLE messages (
    id @ID@,
    mailbox_id BIGINT NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid BIGINT NOT NULL,
    modseq BIGINT NOT NULL,
    sysflags INTEGER NOT NULL DEFAULT 0,
    keywords TEXT NOT NULL DEFAULT '',
    internal_date BIGINT NOT NULL,
    size BIGINT NOT NULL,
    blob_id TEXT NOT NULL,
    env_subject TEXT NOT NULL DEFAULT '',
    env_from TEXT NOT NULL DEFAULT '',
    env_to TEXT NOT NULL DEFAULT '',
    env_cc TEXT NOT NULL DEFAULT '',
    env_date BIGINT,
    env_message_id TEXT NOT NULL DEFAULT '',
    env_in_reply_to TEXT NOT NULL DEFAULT '',
    UNIQUE (mailbox_id, uid)
);
-- Covering index: SELECT / FETCH FLAGS / STATUS on a huge mailbox never touch the table rows.
CREATE INDEX messages_flags ON messages (mailbox_id, uid, modseq, sysflags, keywords, size);
-- CONDSTORE/QRESYNC: what changed since a MODSEQ.
CREATE INDEX messages_modseq ON messages (mailbox_id, modseq);

-- Expunged UIDs with the MODSEQ of their removal (RFC 7162 VANISHED).
CREATE TABLE vanished (
    mailbox_id BIGINT NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid BIGINT NOT NULL,
    modseq BIGINT NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
);
CREATE INDEX vanished_modseq ON vanished (mailbox_id, modseq);

-- How many message rows and queue entries use each blob. A row with refs = 0 is a blob whose
-- last user went in an expunge or move: reap_blobs hands it to the caller for deletion.
CREATE TABLE blobs (
    blob_id TEXT PRIMARY KEY,
    refs BIGINT NOT NULL
);
CREATE INDEX blobs_unused ON blobs (blob_id) WHERE refs = 0;

CREATE TABLE queue (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    blob_id TEXT NOT NULL,
    size BIGINT NOT NULL,
    created BIGINT NOT NULL,
    next_attempt BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    account_id BIGINT REFERENCES accounts (id) ON DELETE SET NULL,
    envid TEXT NOT NULL DEFAULT '',
    ret TEXT NOT NULL DEFAULT '',
    requiretls BOOLEAN NOT NULL DEFAULT FALSE,
    smtputf8 BOOLEAN NOT NULL DEFAULT FALSE,
    body_8bit BOOLEAN NOT NULL DEFAULT FALSE,
    delay_notified BOOLEAN NOT NULL DEFAULT FALSE,
    lease_owner TEXT NOT NULL DEFAULT '',
    lease_until BIGINT
);
CREATE INDEX queue_due ON queue (state, next_attempt);

-- Site-wide counters (the last UIDVALIDITY handed out, so no two mailboxes ever share one).
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('uidvalidity', 0);
