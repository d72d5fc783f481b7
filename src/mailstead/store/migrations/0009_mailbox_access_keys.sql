-- URLAUTH (RFC 4467 2.2): one secret "mailbox access key" per mailbox, the key of the HMAC
-- that authorises its URLAUTH URLs. Made on first GENURLAUTH; RESETKEY deletes it (a new one
-- is made on the next GENURLAUTH), so every URL made with the old key stops working. Kept as
-- hex text, the same on SQLite and PostgreSQL; a deleted mailbox takes its key with it.
CREATE TABLE mailbox_access_keys (
    mailbox_id BIGINT PRIMARY KEY REFERENCES mailboxes (id) ON DELETE CASCADE,
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    access_key TEXT NOT NULL
);

CREATE INDEX mailbox_access_keys_account ON mailbox_access_keys (account_id);
