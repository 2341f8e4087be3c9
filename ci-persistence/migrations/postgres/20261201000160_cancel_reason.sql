-- Why a cancellation was asked for when it was not the owner's own (their
-- account was deactivated): the job's reason once it has ended cancelled.
ALTER TABLE jobs ADD COLUMN cancel_reason TEXT;
