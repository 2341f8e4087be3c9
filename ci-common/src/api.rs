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
    /// Beyond the reference: the exit code of the test command, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Beyond the reference: the sequence number of the job's latest event
    /// (its SSE `id:`), so a client can follow "from now" and still resume
    /// exactly after a dropped connection that delivered no event yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<i64>,
    /// Beyond the reference: the totals of the job's test report; null when
    /// there is none (yet).
    #[serde(default)]
    pub tests: Option<crate::test_results::TestTotals>,
}

impl From<&Job> for JobSummary {
    fn from(job: &Job) -> Self {
        JobSummary {
            job_id: job.id,
            status: job.status,
            success: job.success,
            // As in the reference: when the job started running, null while queued.
            start_time: job.started_at,
            end_time: job.ended_at,
            exit_code: job.exit_code,
            last_event_id: Some(job.last_seq),
            tests: None,
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
    /// Last event: the job has ended.
    Complete { success: bool },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_events_have_the_reference_shape() {
        let id = uuid::Uuid::nil();
        assert_eq!(
            serde_json::to_string(&StreamEvent::JobId { job_id: id }).unwrap(),
            r#"{"type":"job_id","job_id":"00000000-0000-0000-0000-000000000000"}"#
        );
        assert_eq!(
            serde_json::to_string(&StreamEvent::Log { data: "a\n".into() }).unwrap(),
            r#"{"type":"log","data":"a\n"}"#
        );
        assert_eq!(
            serde_json::to_string(&StreamEvent::Complete { success: true }).unwrap(),
            r#"{"type":"complete","success":true}"#
        );
    }

    #[test]
    fn summaries_print_null_for_absent_times() {
        let s = JobSummary {
            job_id: uuid::Uuid::nil(),
            status: JobStatus::Queued,
            success: None,
            start_time: None,
            end_time: None,
            exit_code: None,
            last_event_id: None,
            tests: None,
        };
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["status"], "queued");
        assert!(v["success"].is_null() && v["start_time"].is_null() && v["end_time"].is_null());
        assert!(v["tests"].is_null(), "present, null without a report");
        let back: JobSummary = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
