-- Booleans are stored as 0/1 integers and times as microseconds since the
-- epoch, identically on SQLite and PostgreSQL, so one set of queries serves both.
CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    email       TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    is_active   BIGINT NOT NULL DEFAULT 1
);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    key_prefix    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    is_active     BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX api_keys_user ON api_keys(user_id);

CREATE TABLE archives (
    digest      TEXT PRIMARY KEY,
    data        BYTEA NOT NULL,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    user_id           TEXT NOT NULL REFERENCES users(id),
    status            TEXT NOT NULL,
    success           BIGINT,
    exit_code         BIGINT,
    created_at        BIGINT NOT NULL,
    started_at        BIGINT,
    ended_at          BIGINT,
    container_id      TEXT,
    archive_digest    TEXT NOT NULL REFERENCES archives(digest),
    image             TEXT,
    cancel_requested  BIGINT NOT NULL DEFAULT 0,
    failure_reason    TEXT,
    log_cursor        TEXT,
    last_seq          BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_user_created ON jobs(user_id, created_at);
CREATE INDEX jobs_status ON jobs(status);

CREATE TABLE job_events (
    job_id  TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    text    TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- Version counters bumped in the same transaction as the change they announce;
-- other processes watch them to wake up without scanning the tables.
CREATE TABLE signals (
    channel  TEXT PRIMARY KEY,
    version  BIGINT NOT NULL
);
INSERT INTO signals (channel, version) VALUES ('jobs', 0), ('events', 0);

CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);

-- Other processes learn of a bumped signal by LISTEN ci_signals; the payload
-- names the channel. Delivered on commit, so nobody polls.
CREATE FUNCTION ci_notify_signal() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('ci_signals', NEW.channel);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER signals_notify AFTER UPDATE ON signals
    FOR EACH ROW EXECUTE FUNCTION ci_notify_signal();
