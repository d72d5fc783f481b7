-- The last spam verdicts, for the admin console: when, for which recipient, the score, the
-- rules that matched and what was done (inbox, junk or reject). Bounded: each insert prunes
-- all but the newest rows (services/spam_log.KEEP). The counts per action are kept apart,
-- since the start of the store, so pruning never lowers them.
CREATE TABLE spam_verdicts (
    id @ID@,
    at BIGINT NOT NULL,
    recipient TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    tests TEXT NOT NULL,
    action TEXT NOT NULL
);
CREATE TABLE spam_verdict_counts (
    action TEXT PRIMARY KEY,
    n BIGINT NOT NULL
);
