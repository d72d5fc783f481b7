-- Sieve scripts (RFC 5228) of each user, managed over ManageSieve (RFC 5804), the CLI and the
-- web: at most one active per user. Global scripts (RFC 6609 include :global) are the admin's.
CREATE TABLE sieve_scripts (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    script TEXT NOT NULL,
    active BOOLEAN NOT NULL DEFAULT FALSE,
    updated BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);
CREATE TABLE sieve_global_scripts (
    name TEXT NOT NULL PRIMARY KEY,
    script TEXT NOT NULL,
    updated BIGINT NOT NULL
);
-- Vacation replies sent (RFC 5230 4.1: once per sender per period): the sender and the
-- reply's handle, until when another reply is held back. Kept in the store so it holds across
-- restarts and nodes.
CREATE TABLE vacation_replies (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    sender TEXT NOT NULL,
    handle TEXT NOT NULL,
    until BIGINT NOT NULL,
    PRIMARY KEY (account_id, sender, handle)
);
