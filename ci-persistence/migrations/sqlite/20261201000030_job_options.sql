-- How the user asked for a job to run (all optional; the reference client
-- sends none), and the Python it ran.
ALTER TABLE jobs ADD COLUMN python_requested TEXT;
ALTER TABLE jobs ADD COLUMN project TEXT;
ALTER TABLE jobs ADD COLUMN fresh_env INTEGER NOT NULL DEFAULT 0;
-- A JSON array of strings.
ALTER TABLE jobs ADD COLUMN pytest_args TEXT NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN python TEXT;
