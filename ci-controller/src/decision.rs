//! What a pass does with one unfinished job, as one flat table.
//!
//! As in kube-runtime, deciding is separate from doing: [`decide`] is a pure
//! function of the facts observed about a job ([`Observed`]) and returns the
//! one step ([`Action`]) that moves it closer to where the database wants it.
//! The reconciler gathers the facts and carries the steps out; every rule
//! here is tested without Docker or a database.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ci_common::{Job, JobStatus};
use ci_persistence::JobOutcome;

use crate::runtime::ContainerInfo;

/// What a job's worker is doing, as seen at the start of a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// No worker: nobody in this process is following the job.
    Idle,
    /// Starting the container and/or following its output.
    Following,
    /// The output ended: the container stopped and all of it is stored.
    FollowingEnded,
    /// Following failed (the engine or the database did not answer); what was
    /// not stored is read again from the cursor by the next follower.
    FollowingFailed,
    /// Stopping the container and recording how the job ended.
    Ending,
}

/// The job's container as the engine lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerSeen {
    /// The engine lists no container for the job.
    Absent,
    Running,
    /// Created but not running: exited, or not started yet.
    Stopped,
}

impl ContainerSeen {
    pub fn of(container: Option<&ContainerInfo>) -> Self {
        match container {
            None => ContainerSeen::Absent,
            Some(c) if c.running => ContainerSeen::Running,
            Some(_) => ContainerSeen::Stopped,
        }
    }
}

/// Everything [`decide`] looks at: one row of its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub status: JobStatus,
    pub worker: WorkerState,
    pub cancel_requested: bool,
    /// Running for longer than the job time limit.
    pub timed_out: bool,
    /// Its container was last measured writing more than the job disk
    /// limit (see `disk_watch`); a measurement that failed says nothing.
    pub over_disk_limit: bool,
    pub container: ContainerSeen,
}

impl Observed {
    /// The facts about `job` at `now`, given its container, its worker and
    /// whether its container was measured over the disk limit.
    pub fn of(
        job: &Job,
        container: Option<&ContainerInfo>,
        worker: WorkerState,
        now: DateTime<Utc>,
        timeout: Duration,
        over_disk_limit: bool,
    ) -> Self {
        let started = job.started_at.unwrap_or(job.created_at);
        let running_for = now
            .signed_duration_since(started)
            .to_std()
            .unwrap_or_default();
        Observed {
            status: job.status,
            worker,
            cancel_requested: job.cancel_requested,
            timed_out: job.status == JobStatus::Running && running_for > timeout,
            over_disk_limit: job.status == JobStatus::Running && over_disk_limit,
            container: ContainerSeen::of(container),
        }
    }
}

/// The one step a pass takes for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do until something changes.
    Wait,
    /// Start the job's container. Capacity is not a fact of one job: the
    /// scheduler picks which of these start in this pass, the rest wait.
    Start,
    /// Follow the existing container's output (after a restart, a takeover,
    /// or a follower that failed).
    Adopt,
    /// The container exited and its output is stored: record the exit code.
    Complete,
    /// Stop the container, if there is one, and end the job for this reason.
    End(EndReason),
}

/// Why a job is ended from outside its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Cancelled,
    TimedOut,
    /// It wrote more than the job disk limit (as kubelet evicts a pod over
    /// its ephemeral-storage limit).
    OverDiskLimit,
    ContainerLost,
}

impl EndReason {
    /// How the job ends, as stored (and, for failures, shown as its last
    /// line), given the job time limit and the job disk limit in bytes.
    pub fn outcome(self, timeout: Duration, disk_limit: u64) -> JobOutcome {
        match self {
            EndReason::Cancelled => JobOutcome::cancelled(),
            EndReason::TimedOut => JobOutcome::failed(format!(
                "Job timed out after {} seconds",
                timeout.as_secs()
            )),
            EndReason::OverDiskLimit => JobOutcome::failed(format!(
                "Job used more than {} of disk (limit CI_JOB_DISK_LIMIT)",
                ci_config::format_size(disk_limit)
            )),
            EndReason::ContainerLost => JobOutcome::failed(
                "The job's container disappeared (removed, or the Docker engine restarted); the job cannot finish",
            ),
        }
    }
}

/// Decides the next step for a job. The rows are tried from the top; the
/// first that matches wins.
pub fn decide(o: &Observed) -> Action {
    use Action::*;
    use ContainerSeen::*;
    use EndReason::*;
    use JobStatus::{Cancelled as Over, Completed, Queued, Running as Run};
    use WorkerState::*;
    match (
        o.status,
        o.worker,
        o.cancel_requested,
        o.timed_out,
        o.over_disk_limit,
        o.container,
    ) {
        // An ended job needs nothing; its container, if any, is an orphan.
        (Completed | Over, ..) => Wait,
        // A start in flight finishes first (marking the job running, or
        // failing it); the next pass acts on what it left.
        (Queued, Following | Ending, ..) => Wait,
        (Queued, _, true, ..) => End(Cancelled),
        // A container left over from a start that did not finish is removed
        // by the new start.
        (Queued, _, false, ..) => Start,
        (Run, Ending, ..) => Wait,
        (Run, _, true, ..) => End(Cancelled),
        (Run, _, false, true, ..) => End(TimedOut),
        // Whatever the follower is doing: the job is stopped while it
        // writes, before it fills the engine's disk.
        (Run, _, false, false, true, _) => End(OverDiskLimit),
        // A follower may still be between creating the container and the
        // engine listing it; only a job nobody follows has truly lost it.
        (Run, Following, ..) => Wait,
        (Run, _, false, false, false, Absent) => End(ContainerLost),
        (Run, FollowingEnded, false, false, false, Stopped) => Complete,
        // Nobody follows it (yet, or any more): follow it. An exited container
        // nobody followed is adopted first, so its remaining output is stored
        // before the job completes; a follower that failed is replaced rather
        // than completing on output that may be missing; a stream that broke
        // while the container runs on is followed again.
        (Run, Idle | FollowingEnded | FollowingFailed, false, false, false, Running | Stopped) => {
            Adopt
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ci_common::JobStatus::{Cancelled as Over, Completed, Queued, Running as Run};
    use ci_common::{JobId, UserId};
    use Action::*;
    use ContainerSeen::*;
    use EndReason::*;
    use WorkerState::*;

    /// (status, worker, cancel requested, timed out, over the disk limit,
    /// container) → action, and why.
    type Row = (
        JobStatus,
        WorkerState,
        bool,
        bool,
        bool,
        ContainerSeen,
        Action,
        &'static str,
    );

    #[rustfmt::skip]
    const TABLE: &[Row] = &[
        (Queued, Idle, false, false, false, Absent, Start, "a queued job starts when there is capacity"),
        (Queued, Idle, false, false, false, Stopped, Start, "a container left by a start that died is replaced"),
        (Queued, FollowingEnded, false, false, false, Absent, Start, "a start that could not mark the job running is tried again"),
        (Queued, FollowingFailed, false, false, false, Absent, Start, "a start whose follower failed before marking it running is tried again"),
        (Queued, Following, false, false, false, Absent, Wait, "a start in flight is not started twice"),
        (Queued, Following, true, false, false, Absent, Wait, "a start in flight finishes first; the next pass stops it"),
        (Queued, Ending, false, false, false, Absent, Wait, "a job being ended is left to its worker"),
        (Queued, Idle, true, false, false, Absent, End(Cancelled), "a queued job cancelled never starts"),
        (Queued, Idle, true, false, false, Stopped, End(Cancelled), "a cancelled job's leftover container is removed with it"),
        (Run, Idle, false, false, false, Running, Adopt, "a running container nobody follows is adopted"),
        (Run, Idle, false, false, false, Stopped, Adopt, "an exited container's remaining output is stored before it completes"),
        (Run, Following, false, false, false, Running, Wait, "a followed job is left to its follower"),
        (Run, Following, false, false, false, Absent, Wait, "the engine may not list a container being created yet"),
        (Run, FollowingEnded, false, false, false, Stopped, Complete, "all output stored and the container exited: record the exit code"),
        (Run, FollowingEnded, false, false, false, Running, Adopt, "the output stream broke but the container runs on: follow it again"),
        (Run, FollowingFailed, false, false, false, Stopped, Adopt, "a failed follower is replaced; output may be missing"),
        (Run, FollowingFailed, false, false, false, Running, Adopt, "a failed follower is replaced while the job runs"),
        (Run, Idle, false, false, false, Absent, End(ContainerLost), "a running job whose container is gone cannot finish"),
        (Run, FollowingEnded, false, false, false, Absent, End(ContainerLost), "a container removed after its output ended is lost too"),
        (Run, Following, true, false, false, Running, End(Cancelled), "cancellation stops a followed job"),
        (Run, Idle, true, false, false, Absent, End(Cancelled), "cancellation wins over a lost container"),
        (Run, Following, true, true, false, Running, End(Cancelled), "cancellation wins over the time limit"),
        (Run, Following, false, true, false, Running, End(TimedOut), "a job over its time limit is stopped"),
        (Run, Idle, false, true, false, Absent, End(TimedOut), "the time limit wins over a lost container"),
        (Run, Ending, true, true, false, Running, Wait, "a job being ended is ended once"),
        (Completed, Idle, false, false, false, Running, Wait, "an ended job needs nothing"),
        (Over, FollowingEnded, true, false, false, Absent, Wait, "a cancelled job needs nothing"),
        (Run, Following, false, false, true, Running, End(OverDiskLimit), "a job over its disk limit is stopped while it is followed"),
        (Run, Idle, false, false, true, Running, End(OverDiskLimit), "a job over its disk limit nobody follows is stopped, not adopted"),
        (Run, FollowingEnded, false, false, true, Stopped, End(OverDiskLimit), "a job measured over the limit fails even if it exited meanwhile"),
        (Run, Following, true, false, true, Running, End(Cancelled), "cancellation wins over the disk limit"),
        (Run, Following, false, true, true, Running, End(TimedOut), "the time limit wins over the disk limit"),
        (Run, Ending, false, false, true, Running, Wait, "a job being ended for its disk is ended once"),
        (Queued, Idle, false, false, true, Absent, Start, "a queued job has written nothing yet"),
        (Completed, Idle, false, false, true, Stopped, Wait, "an ended job stays as it ended"),
    ];

    #[test]
    fn every_row_of_the_table_decides_as_documented() {
        for &(
            status,
            worker,
            cancel_requested,
            timed_out,
            over_disk_limit,
            container,
            expected,
            why,
        ) in TABLE
        {
            let observed = Observed {
                status,
                worker,
                cancel_requested,
                timed_out,
                over_disk_limit,
                container,
            };
            assert_eq!(decide(&observed), expected, "{why}: {observed:?}");
        }
    }

    fn job(status: JobStatus, running_for: chrono::Duration) -> Job {
        let since = Utc::now() - running_for;
        let mut job = Job::queued(JobId::random(), UserId::random(), "d".into(), since);
        job.status = status;
        job.started_at = (status == JobStatus::Running).then_some(since);
        job
    }

    #[test]
    fn only_running_jobs_past_the_limit_are_timed_out() {
        const LIMIT: Duration = Duration::from_secs(60);
        let cases = [
            (Run, 61, true),
            (Run, 59, false),
            // A queued job waits for capacity as long as it takes.
            (Queued, 61, false),
        ];
        for (status, secs, expected) in cases {
            let j = job(status, chrono::Duration::seconds(secs));
            let observed = Observed::of(&j, None, Idle, Utc::now(), LIMIT, false);
            assert_eq!(observed.timed_out, expected, "{status:?} for {secs} s");
        }
    }

    #[test]
    fn only_running_jobs_are_over_the_disk_limit() {
        let limit = Duration::from_secs(60);
        for (status, over, expected) in [
            (Run, true, true),
            (Run, false, false),
            (Queued, true, false),
        ] {
            let j = job(status, chrono::Duration::seconds(1));
            let observed = Observed::of(&j, None, Idle, Utc::now(), limit, over);
            assert_eq!(
                observed.over_disk_limit, expected,
                "{status:?}, measured over: {over}"
            );
        }
    }

    #[test]
    fn the_container_is_seen_as_listed() {
        let info = |running| ContainerInfo {
            id: "c".into(),
            job_id: None,
            preparation: None,
            running,
        };
        assert_eq!(ContainerSeen::of(None), Absent);
        assert_eq!(ContainerSeen::of(Some(&info(true))), Running);
        assert_eq!(ContainerSeen::of(Some(&info(false))), Stopped);
    }

    #[test]
    fn ended_jobs_say_why() {
        let limit = Duration::from_secs(60);
        let disk = 4 << 30;
        assert_eq!(Cancelled.outcome(limit, disk), JobOutcome::cancelled());
        let timed_out = TimedOut.outcome(limit, disk);
        assert_eq!(timed_out.success, Some(false));
        assert_eq!(
            timed_out.reason.as_deref(),
            Some("Job timed out after 60 seconds")
        );
        let over = OverDiskLimit.outcome(limit, disk);
        assert_eq!(over.success, Some(false));
        assert_eq!(
            over.reason.as_deref(),
            Some("Job used more than 4.0 GiB of disk (limit CI_JOB_DISK_LIMIT)")
        );
        let lost = ContainerLost.outcome(limit, disk);
        assert_eq!(lost.success, Some(false));
        assert!(lost.reason.is_some_and(|r| r.contains("disappeared")));
    }
}
