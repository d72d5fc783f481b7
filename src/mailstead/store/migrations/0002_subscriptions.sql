-- Subscriptions are names, not mailboxes: RFC 9051 6.3.7 says the server must not remove a
-- name from the subscription list because its mailbox is gone (DELETE keeps it; LIST shows
-- it \NonExistent), so they live in their own table rather than as a mailbox column.
CREATE TABLE subscriptions (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    PRIMARY KEY (account_id, name)
);

INSERT INTO subscriptions (account_id, name)
    SELECT account_id, name FROM mailboxes WHERE subscribed;

ALTER TABLE mailboxes DROP COLUMN subscribed;
