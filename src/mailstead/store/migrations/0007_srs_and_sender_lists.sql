-- Allow and block lists of senders (addresses, domains, IP ranges), each entry owned by one
-- account or by one domain (set by an admin, it applies to all the domain's users).
-- action: for a block entry "refuse" (550 5.7.1 at RCPT) or "junk"; "" for an allow entry.
CREATE TABLE sender_lists (
    id @ID@,
    account_id BIGINT REFERENCES accounts (id) ON DELETE CASCADE,
    domain_id BIGINT REFERENCES domains (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    pattern TEXT NOT NULL,
    action TEXT NOT NULL,
    created BIGINT NOT NULL
);
CREATE INDEX sender_lists_account ON sender_lists (account_id);
CREATE INDEX sender_lists_domain ON sender_lists (domain_id);
-- Bumped with every change of the lists, so each process reads one number a second and
-- fetches entries again only after a change.
CREATE TABLE sender_lists_version (
    id INTEGER PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO sender_lists_version (id, version) VALUES (1, 0);
