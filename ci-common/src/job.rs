//! Jobs, their life cycle and their output.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::python::PythonVersion;

pub use crate::id::JobId;
use crate::id::UserId;

/// Where a job is in its life. The database stores the lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Cancelled,
}

/// A status change that the life cycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a job cannot go from {from} to {to}")]
pub struct TransitionError {
    pub from: JobStatus,
    pub to: JobStatus,
}

impl JobStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [JobStatus; 4] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Cancelled,
    ];

    /// Whether the job has ended; an ended job never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Cancelled)
    }

    /// The legal moves: queued → running → completed, and queued or running →
    /// cancelled. A queued job may also complete directly, which is how a job
    /// that could not run at all (bad archive, missing image) ends.
    pub fn can_become(self, next: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, next),
            (Queued, Running)
                | (Queued, Completed)
                | (Queued, Cancelled)
                | (Running, Completed)
                | (Running, Cancelled)
        )
    }

    /// Checks a move against [`JobStatus::can_become`].
    pub fn transition(self, next: JobStatus) -> Result<JobStatus, TransitionError> {
        if self.can_become(next) {
            Ok(next)
        } else {
            Err(TransitionError {
                from: self,
                to: next,
            })
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of [`JobStatus::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown job status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

/// A job as the database holds it: the desired state written by the API and
/// the observed state written back by the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub user_id: UserId,
    pub status: JobStatus,
    /// `None` until the job has completed; a cancelled job has none.
    pub success: Option<bool>,
    pub exit_code: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub container_id: Option<String>,
    /// SHA-256 of the uploaded project archive, the key into the archive store.
    pub archive_digest: String,
    /// The image the job ran in, recorded when its container is created.
    pub image: Option<String>,
    pub cancel_requested: bool,
    /// Why the job could not run or was stopped, when that is the case.
    pub failure_reason: Option<String>,
    /// Where the stored output ends in the container's log, so that a
    /// restarted controller resumes the output exactly after it.
    pub log_cursor: Option<LogCursor>,
    /// Sequence number of the last stored output chunk (0 when none).
    pub last_seq: i64,
    /// How the user asked for the job to run.
    pub options: JobOptions,
    /// The Python the job ran, once its image was chosen.
    pub python: Option<PythonVersion>,
    /// The request id of the submission that queued it, when there was one.
    pub request_id: Option<String>,
}

/// How the user asked for a job to run, beside the project itself. All of it
/// is optional: the reference client sends none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobOptions {
    /// `--python X.Y`: this Python exactly.
    pub python: Option<PythonVersion>,
    /// The project the job belongs to (its name), for history.
    pub project: Option<String>,
    /// `--fresh-env`: build the dependency environment anew.
    pub fresh_env: bool,
    /// Arguments for pytest, passed as argv (never through a shell).
    pub pytest_args: Vec<String>,
}

impl Job {
    /// A job just submitted: queued, nothing observed about it yet.
    pub fn queued(
        id: JobId,
        user_id: UserId,
        archive_digest: String,
        created_at: DateTime<Utc>,
    ) -> Job {
        Job {
            id,
            user_id,
            status: JobStatus::Queued,
            success: None,
            exit_code: None,
            created_at,
            started_at: None,
            ended_at: None,
            container_id: None,
            archive_digest,
            image: None,
            cancel_requested: false,
            failure_reason: None,
            log_cursor: None,
            last_seq: 0,
            options: JobOptions::default(),
            request_id: None,
            python: None,
        }
    }
}

/// Where a job's stored output ends in its container's log: the engine's
/// timestamp (RFC 3339, to the nanosecond) of the last line stored. A follower
/// that resumes asks the engine for the lines after it, so nothing is stored
/// twice or lost across a restart or a broken read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogCursor(String);

impl LogCursor {
    pub fn new(timestamp: impl Into<String>) -> Self {
        LogCursor(timestamp.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A log follower's claim when it stores output: the cursor it last saw
/// stored (`from`, none before the first line) and the one its batch ends at
/// (`to`). The store refuses the write when the stored cursor is no longer
/// `from`: another follower of the same job (a controller that was thought
/// gone) stored output in between, and storing this batch too would store
/// those lines twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorMove {
    pub from: Option<LogCursor>,
    pub to: LogCursor,
}

/// One stored piece of a job's output. Output is stored in batches, so one
/// chunk usually holds many lines; `seq` numbers the chunks of a job from 1 and
/// is the SSE event id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub seq: i64,
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legal_transitions_are_exactly_the_life_cycle() {
        use JobStatus::*;
        let legal = [
            (Queued, Running),
            (Queued, Completed),
            (Queued, Cancelled),
            (Running, Completed),
            (Running, Cancelled),
        ];
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                let expected = legal.contains(&(from, to));
                assert_eq!(from.can_become(to), expected, "{from} -> {to}");
                assert_eq!(from.transition(to).is_ok(), expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn terminal_states_never_move() {
        for from in [JobStatus::Completed, JobStatus::Cancelled] {
            assert!(from.is_terminal());
            for to in JobStatus::ALL {
                assert_eq!(
                    from.transition(to),
                    Err(TransitionError { from, to }),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn status_names_round_trip() {
        for st in JobStatus::ALL {
            assert_eq!(st.as_str().parse::<JobStatus>().unwrap(), st);
            assert_eq!(
                serde_json::to_string(&st).unwrap(),
                format!("\"{}\"", st.as_str())
            );
        }
        assert!("done".parse::<JobStatus>().is_err());
    }
}
