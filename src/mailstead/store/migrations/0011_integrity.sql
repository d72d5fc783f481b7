-- What the reader is told about a message's integrity (mailsec/integrity.py), decided once at
-- delivery: 'verified' (DMTP hash matches, or DKIM passes for the From domain by our own
-- Authentication-Results), 'unsigned' (nothing to check), 'failed' (hash or signature does not
-- match). NULL when unknown or not applicable (our users' own mail, APPEND, rows stored
-- before this migration). The same statement suits SQLite and PostgreSQL.
ALTER TABLE messages ADD COLUMN integrity TEXT;
