-- The POP3 maildrop lock (RFC 1939 section 8, RFC 2449 [IN-USE]) shared by every node of a
-- site: a lease that its session renews, so the lock of a node that died ends by itself.
CREATE TABLE maildrop_locks (
    mailbox_id BIGINT PRIMARY KEY REFERENCES mailboxes (id) ON DELETE CASCADE,
    owner TEXT NOT NULL,
    expires BIGINT NOT NULL
);
