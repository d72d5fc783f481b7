-- State that every node of a site shares, kept in the store rather than in each node's data
-- directory: DKIM keys (one selector per domain for the whole cluster) and named secrets (the
-- DMAP RSA key, the web session/API secret, ...).
CREATE TABLE dkim_domains (
    domain TEXT PRIMARY KEY,
    active TEXT NOT NULL
);
CREATE TABLE dkim_keys (
    domain TEXT NOT NULL REFERENCES dkim_domains (domain) ON DELETE CASCADE,
    selector TEXT NOT NULL,
    rsa_pem TEXT NOT NULL,
    ed25519_pem TEXT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (domain, selector)
);
CREATE TABLE shared_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created BIGINT NOT NULL
);
