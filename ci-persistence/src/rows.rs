//! Turning rows back into domain types. Ids are stored as text, times as
//! microseconds, flags as 0/1 (see the migrations).

use ci_common::api::{duration_seconds, JobSummary};
use ci_common::time::from_micros;
use ci_common::{ApiKeyRecord, Job, JobOptions, JobStatus, LogCursor, PythonVersion, User};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::str::FromStr;

use crate::error::{Result, StoreError};

pub(crate) const USER_COLUMNS: &str = "id, name, email, created_at, is_active";
pub(crate) const KEY_COLUMNS: &str =
    "id, user_id, name, key_prefix, created_at, last_used_at, is_active";
pub(crate) const JOB_COLUMNS: &str =
    "id, user_id, status, success, exit_code, created_at, started_at, ended_at, \
     container_id, archive_digest, image, cancel_requested, failure_reason, log_cursor, last_seq, \
     python_requested, project, fresh_env, pytest_args, python, request_id";

/// What a [`JobSummary`] needs of a job.
pub(crate) const SUMMARY_COLUMNS: &str =
    "id, status, success, exit_code, created_at, started_at, ended_at, failure_reason, last_seq, \
     python, project";

/// `columns` of the table aliased `alias`, each renamed `prefix` + name, for
/// selecting two tables' rows as one.
pub(crate) fn aliased(columns: &str, alias: &str, prefix: &str) -> String {
    columns
        .split(", ")
        .map(|c| format!("{alias}.{c} AS {prefix}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An identity ([`ci_common::JobId`], [`ci_common::UserId`], ...) stored as text.
pub(crate) fn id<T: FromStr<Err = uuid::Error>>(row: &AnyRow, col: &str) -> Result<T> {
    let s: String = row.try_get(col)?;
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("{col} {s:?}: {e}")))
}

fn flag(row: &AnyRow, col: &str) -> Result<bool> {
    Ok(row.try_get::<i64, _>(col)? != 0)
}

pub(crate) fn user(row: &AnyRow) -> Result<User> {
    Ok(User {
        id: id(row, "id")?,
        name: row.try_get("name")?,
        email: row.try_get("email")?,
        created_at: from_micros(row.try_get("created_at")?),
        is_active: flag(row, "is_active")?,
    })
}

/// A user selected with [`aliased`] columns under `prefix`.
pub(crate) fn user_prefixed(row: &AnyRow, prefix: &str) -> Result<User> {
    let col = |c: &str| format!("{prefix}{c}");
    Ok(User {
        id: id(row, &col("id"))?,
        name: row.try_get(col("name").as_str())?,
        email: row.try_get(col("email").as_str())?,
        created_at: from_micros(row.try_get(col("created_at").as_str())?),
        is_active: flag(row, &col("is_active"))?,
    })
}

pub(crate) fn api_key(row: &AnyRow) -> Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: id(row, "id")?,
        user_id: id(row, "user_id")?,
        name: row.try_get("name")?,
        key_prefix: row.try_get("key_prefix")?,
        created_at: from_micros(row.try_get("created_at")?),
        last_used_at: row
            .try_get::<Option<i64>, _>("last_used_at")?
            .map(from_micros),
        is_active: flag(row, "is_active")?,
    })
}

pub(crate) fn job_summary(row: &AnyRow) -> Result<JobSummary> {
    let start_time = row
        .try_get::<Option<i64>, _>("started_at")?
        .map(from_micros);
    let end_time = row.try_get::<Option<i64>, _>("ended_at")?.map(from_micros);
    Ok(JobSummary {
        success: row.try_get::<Option<i64>, _>("success")?.map(|v| v != 0),
        start_time,
        end_time,
        exit_code: row.try_get("exit_code")?,
        last_event_id: Some(row.try_get("last_seq")?),
        submitted_at: Some(from_micros(row.try_get("created_at")?)),
        duration_seconds: duration_seconds(start_time, end_time),
        reason: row.try_get("failure_reason")?,
        python: python(row, "python")?.map(|p| p.to_string()),
        project: row.try_get("project")?,
        tests: crate::test_results::totals(row)?,
        ..JobSummary::new(id(row, "id")?, status(row)?)
    })
}

fn status(row: &AnyRow) -> Result<JobStatus> {
    let status: String = row.try_get("status")?;
    status
        .parse::<JobStatus>()
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn job(row: &AnyRow) -> Result<Job> {
    Ok(Job {
        id: id(row, "id")?,
        user_id: id(row, "user_id")?,
        status: status(row)?,
        success: row.try_get::<Option<i64>, _>("success")?.map(|v| v != 0),
        exit_code: row.try_get("exit_code")?,
        created_at: from_micros(row.try_get("created_at")?),
        started_at: row
            .try_get::<Option<i64>, _>("started_at")?
            .map(from_micros),
        ended_at: row.try_get::<Option<i64>, _>("ended_at")?.map(from_micros),
        container_id: row.try_get("container_id")?,
        archive_digest: row.try_get("archive_digest")?,
        image: row.try_get("image")?,
        cancel_requested: flag(row, "cancel_requested")?,
        failure_reason: row.try_get("failure_reason")?,
        log_cursor: row
            .try_get::<Option<String>, _>("log_cursor")?
            .map(LogCursor::new),
        last_seq: row.try_get("last_seq")?,
        options: JobOptions {
            python: python(row, "python_requested")?,
            project: row.try_get("project")?,
            fresh_env: flag(row, "fresh_env")?,
            pytest_args: {
                let raw: String = row.try_get("pytest_args")?;
                serde_json::from_str(&raw)
                    .map_err(|e| StoreError::Corrupt(format!("pytest_args {raw:?}: {e}")))?
            },
        },
        python: python(row, "python")?,
        request_id: row.try_get("request_id")?,
    })
}

fn python(row: &AnyRow, col: &str) -> Result<Option<PythonVersion>> {
    row.try_get::<Option<String>, _>(col)?
        .map(|raw| {
            raw.parse()
                .map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
        })
        .transpose()
}
