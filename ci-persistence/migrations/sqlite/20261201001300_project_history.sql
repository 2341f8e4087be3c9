-- A project's history (new failures, GET /projects/{name}/tests) reads the
-- owner's jobs of one project in the order they ended.
CREATE INDEX jobs_user_project_ended ON jobs(user_id, project, ended_at);
