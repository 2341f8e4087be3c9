-- GET /jobs lists a user's jobs newest first: an index in that order spares
-- the sort.
DROP INDEX jobs_user_created;
CREATE INDEX jobs_user_newest ON jobs(user_id, created_at DESC, id DESC);
