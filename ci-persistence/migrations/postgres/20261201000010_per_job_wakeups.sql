-- Wake-ups per job: a change of a job's output or status is announced on
-- ci_signals with the payload 'job:<id>', so only that job's streams wake, and
-- no shared row is written per output batch. 'jobs' (which the controller
-- listens for) is sent when a job is created, cancelled, started or ended.
-- The database sends them, whoever writes the row; NOTIFY is delivered on
-- commit and repeats within one transaction are sent once.
CREATE FUNCTION ci_notify_job_change() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('ci_signals', 'jobs');
        RETURN NEW;
    END IF;
    IF NEW.last_seq IS DISTINCT FROM OLD.last_seq OR NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM pg_notify('ci_signals', 'job:' || NEW.id);
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status
        OR NEW.cancel_requested IS DISTINCT FROM OLD.cancel_requested THEN
        PERFORM pg_notify('ci_signals', 'jobs');
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION ci_notify_job_change();
