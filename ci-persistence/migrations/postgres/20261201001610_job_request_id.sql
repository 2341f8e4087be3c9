-- The request id of the submission that queued the job (`x-request-id`),
-- so the controller's log lines about the job can be found from the
-- server's access line, and back.
ALTER TABLE jobs ADD COLUMN request_id TEXT;
