-- Browser sessions: the page trades an API key for a cookie. Only the SHA-256
-- of the session id is stored, with the key it was made from, so the key's
-- revocation or its owner's deactivation ends the session, and deleting the key
-- deletes its sessions.
CREATE TABLE sessions (
    id_hash     TEXT PRIMARY KEY,
    key_id      TEXT NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL
);
CREATE INDEX sessions_key ON sessions(key_id);
