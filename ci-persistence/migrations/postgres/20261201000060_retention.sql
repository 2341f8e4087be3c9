-- Retention: the reaper takes the ended jobs oldest first, by when they
-- ended (in index order, so a step reads only the jobs it removes), and asks
-- of each archive whether any job is still on it. The second index also
-- spares PostgreSQL a scan of `jobs` for the foreign-key check of every
-- archive deleted.
CREATE INDEX jobs_ended ON jobs(ended_at, id);
CREATE INDEX jobs_archive ON jobs(archive_digest);
