-- Version 5: API tokens (stored as hashes only), UI sessions, where an audited request
-- came from, and which token registered an agent.

-- One row per API token; `hash` is the SHA-256 of the token, the token itself is shown
-- once and kept nowhere. `revoked` is when it was revoked (NULL: not revoked).
CREATE TABLE tokens(
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    expires REAL,
    revoked REAL
);

-- Signed-in browsers: `hash` is the SHA-256 of the session cookie's value; `csrf` the
-- token its forms must carry. Deleted on sign-out; useless once its token is revoked.
CREATE TABLE sessions(
    hash TEXT PRIMARY KEY,
    token_name TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX sessions_by_token ON sessions(token_name);

ALTER TABLE audit ADD COLUMN address TEXT;
ALTER TABLE agents ADD COLUMN token_name TEXT;
