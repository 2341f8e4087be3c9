//! The HTTP API's bodies and Server-Sent Events, shared by server and client.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::job::{Job, JobId, JobStatus};

/// `{"job_id": "…"}`, the answer to `POST /submit-async`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitResponse {
    pub job_id: JobId,
}

/// Every error body: `{"detail": "…"}`, as FastAPI writes them in the reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub detail: String,
}

/// A job as `GET /jobs` and `GET /jobs/{id}` show it, and `ci list --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    pub job_id: JobId,
    pub status: JobStatus,
    pub success: Option<bool>,
    #[serde(with = "crate::time::api_format_opt")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(with = "crate::time::api_format_opt")]
    pub end_time: Option<DateTime<Utc>>,
    /// Beyond the reference: the exit code of the test command; always
    /// present, null when it did not run.
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// Beyond the reference: the sequence number of the job's latest event
    /// (its SSE `id:`), so a client can follow "from now" and still resume
    /// exactly after a dropped connection that delivered no event yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<i64>,
    /// Beyond the reference: when the job was accepted, so a queued job has a
    /// time too. `None` only from servers that do not send it.
    #[serde(default, with = "crate::time::api_format_opt")]
    pub submitted_at: Option<DateTime<Utc>>,
    /// Beyond the reference: start to end of the job's container, in seconds.
    #[serde(default)]
    pub duration_seconds: Option<f64>,
    /// Why a job that could not run, or was stopped, ended so.
    #[serde(default)]
    pub reason: Option<String>,
    /// The Python the job ran (`"3.13"`); null until its image is chosen, or
    /// when its image says no Python.
    #[serde(default)]
    pub python: Option<String>,
    /// The project name the client sent, if any.
    #[serde(default)]
    pub project: Option<String>,
    /// The Docker engine the job ran on; null until engines are recorded.
    #[serde(default)]
    pub engine: Option<String>,
    /// The totals of the job's test report; null when there is none (yet).
    #[serde(default)]
    pub tests: Option<crate::test_results::TestTotals>,
    /// Beyond the contract, in `GET /jobs/{id}` of a queued job only: how
    /// many queued jobs (anyone's) were submitted before it, plus one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i64>,
}

impl JobSummary {
    /// A summary with only the identity and status known, every optional
    /// field absent: the start for servers' and tests' summaries alike.
    pub fn new(job_id: JobId, status: JobStatus) -> Self {
        JobSummary {
            job_id,
            status,
            success: None,
            start_time: None,
            end_time: None,
            exit_code: None,
            last_event_id: None,
            submitted_at: None,
            duration_seconds: None,
            reason: None,
            python: None,
            project: None,
            engine: None,
            tests: None,
            queue_position: None,
        }
    }
}

/// Seconds from a job's start to its end, when it has both.
pub fn duration_seconds(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> Option<f64> {
    let (start, end) = (start?, end?);
    Some((end - start).num_microseconds()? as f64 / 1e6)
}

impl From<&Job> for JobSummary {
    fn from(job: &Job) -> Self {
        JobSummary {
            success: job.success,
            // As in the reference: when the job started running, null while queued.
            start_time: job.started_at,
            end_time: job.ended_at,
            exit_code: job.exit_code,
            last_event_id: Some(job.last_seq),
            submitted_at: Some(job.created_at),
            duration_seconds: duration_seconds(job.started_at, job.ended_at),
            reason: job.failure_reason.clone(),
            python: job.python.map(|p| p.to_string()),
            project: job.options.project.clone(),
            ..JobSummary::new(job.id, job.status)
        }
    }
}

/// Where a job's event stream starts, as a client asks for it and the server
/// reads it from `GET /jobs/{id}/stream`: only what comes from now on (the
/// default), everything from the first event (`?from_beginning=true`), or
/// exactly the events after a sequence number (`?after=N`, or `Last-Event-ID:
/// N` when a stream is resumed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStart {
    Now,
    Beginning,
    After(i64),
}

impl StreamStart {
    /// The start a request asks for: a sequence number (`after`, else
    /// `Last-Event-ID`) wins over `from_beginning`.
    pub fn requested(after: Option<i64>, last_event_id: Option<i64>, from_beginning: bool) -> Self {
        match (after.or(last_event_id), from_beginning) {
            (Some(seq), _) => StreamStart::After(seq.max(0)),
            (None, true) => StreamStart::Beginning,
            (None, false) => StreamStart::Now,
        }
    }

    /// The query parameters that ask for this start.
    pub fn query(self) -> Vec<(&'static str, String)> {
        match self {
            StreamStart::Now => Vec::new(),
            StreamStart::Beginning => vec![("from_beginning", "true".to_string())],
            StreamStart::After(seq) => vec![("after", seq.to_string())],
        }
    }
}

/// The JSON payload of one SSE `data:` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// First event of `POST /submit-stream`: which job was created.
    JobId { job_id: JobId },
    /// A piece of the job's output, newlines included.
    Log { data: String },
    /// Last event: the job has ended. `status` (beyond the reference, which
    /// ignores unknown keys) tells a cancelled job from a failed one; absent
    /// from servers that do not send it.
    Complete {
        success: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<JobStatus>,
    },
    /// Last event of a stream the server stopped before the job ended (beyond
    /// the reference, whose client skips types it does not know): today only
    /// when the stream's key was revoked or its user deactivated while it was
    /// open. `detail` is what an HTTP error's `{"detail"}` would say, and
    /// `status_code` the HTTP status the same request would now get (401),
    /// so a client reports it as it reports that answer.
    Error {
        detail: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status_code: Option<u16>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_event_keeps_its_wire_format() {
        let event = StreamEvent::Error {
            detail: "Invalid or revoked API key".into(),
            status_code: Some(401),
        };
        let wire = serde_json::to_value(&event).unwrap();
        assert_eq!(
            wire,
            serde_json::json!({"type": "error", "detail": "Invalid or revoked API key", "status_code": 401})
        );
        // An error event of an earlier server, without the status.
        let earlier: StreamEvent =
            serde_json::from_str(r#"{"type":"error","detail":"gone"}"#).unwrap();
        assert_eq!(
            earlier,
            StreamEvent::Error {
                detail: "gone".into(),
                status_code: None
            }
        );
        // The contract's events are unchanged.
        let complete = StreamEvent::Complete {
            success: true,
            status: None,
        };
        assert_eq!(
            serde_json::to_string(&complete).unwrap(),
            r#"{"type":"complete","success":true}"#
        );
    }

    #[test]
    fn a_stream_start_reads_back_from_its_own_query() {
        for start in [
            StreamStart::Now,
            StreamStart::Beginning,
            StreamStart::After(7),
        ] {
            let query = start.query();
            let get = |k: &str| query.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
            let after = get("after").map(|v| v.parse().unwrap());
            assert_eq!(
                StreamStart::requested(after, None, get("from_beginning").is_some()),
                start
            );
        }
        // A resumed stream's Last-Event-ID wins over from_beginning; ?after over both.
        assert_eq!(
            StreamStart::requested(None, Some(5), true),
            StreamStart::After(5)
        );
        assert_eq!(
            StreamStart::requested(Some(2), Some(5), false),
            StreamStart::After(2)
        );
        assert_eq!(
            StreamStart::requested(Some(-3), None, false),
            StreamStart::After(0)
        );
    }

    #[test]
    fn stream_events_have_the_reference_shape() {
        let id = JobId::nil();
        assert_eq!(
            serde_json::to_string(&StreamEvent::JobId { job_id: id }).unwrap(),
            r#"{"type":"job_id","job_id":"00000000-0000-0000-0000-000000000000"}"#
        );
        assert_eq!(
            serde_json::to_string(&StreamEvent::Log { data: "a\n".into() }).unwrap(),
            r#"{"type":"log","data":"a\n"}"#
        );
        assert_eq!(
            serde_json::to_string(&StreamEvent::Complete {
                success: true,
                status: None
            })
            .unwrap(),
            r#"{"type":"complete","success":true}"#
        );
        assert_eq!(
            serde_json::to_string(&StreamEvent::Complete {
                success: false,
                status: Some(JobStatus::Cancelled)
            })
            .unwrap(),
            r#"{"type":"complete","success":false,"status":"cancelled"}"#
        );
        let old: StreamEvent =
            serde_json::from_str(r#"{"type":"complete","success":true}"#).unwrap();
        assert_eq!(
            old,
            StreamEvent::Complete {
                success: true,
                status: None
            }
        );
    }

    #[test]
    fn summaries_print_null_for_absent_times() {
        let s = JobSummary::new(JobId::nil(), JobStatus::Queued);
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["status"], "queued");
        assert!(v["success"].is_null() && v["start_time"].is_null() && v["end_time"].is_null());
        // The contract's fields are always present, null when empty.
        for key in [
            "submitted_at",
            "duration_seconds",
            "python",
            "project",
            "engine",
            "exit_code",
            "reason",
            "tests",
        ] {
            assert!(v.get(key).is_some_and(|v| v.is_null()), "{key} in {v}");
        }
        let back: JobSummary = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
        // A reference server's summary, without the additions, still reads.
        let reference: JobSummary = serde_json::from_str(
            r#"{"job_id":"00000000-0000-0000-0000-000000000000","status":"queued",
                "success":null,"start_time":null,"end_time":null}"#,
        )
        .unwrap();
        assert_eq!(reference, s);
    }

    #[test]
    fn durations_need_both_ends() {
        let t = |s| DateTime::<Utc>::from_timestamp(s, 500_000_000);
        assert_eq!(duration_seconds(t(10), t(12)), Some(2.0));
        assert_eq!(duration_seconds(t(10), None), None);
    }
}
