-- Version 5: secrets, encrypted at rest (Fernet; the key is never in the store, see
-- python/ferroflow/server/secrets.py). Names and dates are readable; values are not.
CREATE TABLE secrets(
    name TEXT PRIMARY KEY,
    ciphertext TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
