-- The SORT/THREAD keys of each message (RFC 5256), computed once at delivery instead of at
-- every SORT or THREAD (core/base_subject.thread_keys): the comparison key of the base
-- subject, whether it was a reply or forward, the first msg-id of Message-ID and the msg-ids
-- the message threads under. NULL for a row whose envelope only the message file has;
-- thread_parents also NULL when References was not recorded (before 0005). Rows stored
-- before this migration are filled in by sql_base.backfill_thread_keys right after it:
-- then: backfill_thread_keys
ALTER TABLE messages ADD COLUMN sort_subject TEXT;
ALTER TABLE messages ADD COLUMN sort_reply INTEGER;
ALTER TABLE messages ADD COLUMN thread_id TEXT;
ALTER TABLE messages ADD COLUMN thread_parents TEXT;
