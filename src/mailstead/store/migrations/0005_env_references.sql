-- The References header field of each message, kept with the other envelope columns for
-- THREAD=REFERENCES (RFC 5256). NULL for rows stored before: the message file answers then.
ALTER TABLE messages ADD COLUMN env_references TEXT;
