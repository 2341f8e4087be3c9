-- Wake-ups per job. Other processes' change watchers learn which jobs moved
-- from the jobs' own rows (last_seq, status), so output batches no longer bump
-- a shared `signals` row; the 'jobs' signal, which the controller waits on,
-- is bumped here, by the database, whenever a job is created, cancelled,
-- started or ended, whoever writes it. The 'events' row stays for older
-- binaries during an upgrade.
CREATE TRIGGER jobs_signal_created AFTER INSERT ON jobs
BEGIN
    UPDATE signals SET version = version + 1 WHERE channel = 'jobs';
END;

CREATE TRIGGER jobs_signal_changed AFTER UPDATE OF status, cancel_requested ON jobs
    WHEN NEW.status IS NOT OLD.status OR NEW.cancel_requested IS NOT OLD.cancel_requested
BEGIN
    UPDATE signals SET version = version + 1 WHERE channel = 'jobs';
END;
