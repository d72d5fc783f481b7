-- Each user's learning spam filter: how many of the spam and good messages they trained held
-- each token (a 64-bit hash of it, spam/tokenize.py), and which messages they trained, so a
-- message moved back and forth counts once, in the class it was last given.
CREATE TABLE spam_tokens (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    token BIGINT NOT NULL,
    spam INTEGER NOT NULL DEFAULT 0,
    ham INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, token)
);
CREATE TABLE spam_trained (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    message TEXT NOT NULL,
    is_spam BOOLEAN NOT NULL,
    PRIMARY KEY (account_id, message)
);
