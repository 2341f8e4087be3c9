-- Test results as data: one row per job whose end was looked at for a report
-- (its totals, or why it has none), and the report's cases in report order.
-- Durations are microseconds, like every time here.
CREATE TABLE job_test_reports (
    job_id       TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    passed       BIGINT,
    failed       BIGINT,
    errors       BIGINT,
    skipped      BIGINT,
    duration_us  BIGINT,
    -- Set when there are no results: why (no report, malformed, over a limit).
    reason       TEXT
);

CREATE TABLE job_test_cases (
    job_id       TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    ordinal      BIGINT NOT NULL,
    test_id      TEXT NOT NULL,
    file         TEXT,
    name         TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    duration_us  BIGINT NOT NULL,
    message      TEXT,
    traceback    TEXT,
    PRIMARY KEY (job_id, ordinal)
);
-- Flakiness compares a test's outcomes across jobs on the same code.
CREATE INDEX job_test_cases_test ON job_test_cases(test_id, job_id);
-- ... among the owner's jobs on the same archive.
CREATE INDEX jobs_user_archive ON jobs(user_id, archive_digest);
