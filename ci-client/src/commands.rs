//! The `ci` subcommands: part of the binary, not the library, because they
//! print and decide exit codes. What they print is built in
//! [`ci_client::output`] where it can be tested.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use ci_client::output::{format_job_json, format_job_table, AUTH_HELP};
use ci_client::{pack_project, ApiClient, ClientError, FollowFrom, JobEvents};
use ci_common::api::{JobSummary, StreamEvent};
use ci_common::{JobId, JobStatus};
use futures::StreamExt;

use crate::tests_command::print_end_of_job_summary;

/// The shell's convention for "ended by SIGINT".
const EXIT_INTERRUPTED: u8 = 130;
/// How long a Ctrl-C'd submit waits for the server to accept the cancellation.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// The settings every command needs, resolved from flags, env and config.
pub struct Context {
    pub server_url: String,
    pub api_key: Option<String>,
}

impl Context {
    pub(crate) fn api(&self) -> Result<ApiClient, ClientError> {
        Ok(
            ApiClient::new(&self.server_url, self.api_key.clone())?.on_reconnect(|error| {
                eprintln!("Connection to the CI server lost, reconnecting… ({error})");
            }),
        )
    }
}

/// Prints a failed command's error, with the key help when the server
/// refused the key, and gives the exit code for failure.
pub fn report(error: &anyhow::Error) -> ExitCode {
    eprintln!("Error: {error:#}");
    let auth_failed = error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<ClientError>())
        .any(ClientError::is_auth_failure);
    if auth_failed {
        eprint!("{AUTH_HELP}");
    }
    ExitCode::FAILURE
}

/// `ci submit test --async`.
pub async fn submit_async(context: &Context) -> anyhow::Result<ExitCode> {
    let api = context.api()?;
    let zip = zip_current_dir().await?;
    let job_id = api.submit_async(zip).await?;
    println!("Job submitted: {job_id}");
    Ok(ExitCode::SUCCESS)
}

/// How far a sync submit got, for deciding what Ctrl-C has to undo.
#[derive(Clone, Copy, Debug, PartialEq)]
enum SubmitProgress {
    /// Still packing: the server knows nothing yet.
    Packing,
    /// The upload is under way: the server may have created the job already.
    Uploading,
    /// The server named the job.
    Named(JobId),
}

/// `ci submit test`: upload, then print the job's output as it happens.
/// Ctrl-C cancels the job on the server, also when it comes while the upload
/// is still in flight: then the stream is read on until the server names the
/// job, so no job is left running that the user tried to stop.
pub async fn submit_and_follow(context: &Context) -> anyhow::Result<ExitCode> {
    let api = context.api()?;
    let (progress_tx, mut progress) = tokio::sync::watch::channel(SubmitProgress::Packing);
    let sink = LogSink::default();
    let run = async {
        let zip = zip_current_dir().await?;
        progress_tx.send_replace(SubmitProgress::Uploading);
        let mut events = api.submit_stream(zip).await?;
        let code = print_events(&mut events, &sink, |id| {
            progress_tx.send_replace(SubmitProgress::Named(id));
        })
        .await?;
        if let SubmitProgress::Named(id) = *progress_tx.borrow() {
            print_end_of_job_summary(&api, id).await;
        }
        Ok(code)
    };
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => {
            if result.is_err() {
                sink.end_line();
            }
            return result;
        }
        _ = tokio::signal::ctrl_c() => {}
    }

    eprint!("\n\nJob cancelled by user.\n");
    let interrupted_at = *progress.borrow_and_update();
    let job_id = match interrupted_at {
        SubmitProgress::Packing => {
            eprintln!("Nothing was sent to the server.");
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
        SubmitProgress::Named(id) => Some(id),
        SubmitProgress::Uploading => {
            // The server names the job as soon as it has stored it; read on
            // until it does, or the upload fails.
            let named = async {
                tokio::select! {
                    _ = &mut run => None,
                    named = progress.wait_for(|p| matches!(p, SubmitProgress::Named(_))) => {
                        match named.as_deref() {
                            Ok(SubmitProgress::Named(id)) => Some(*id),
                            _ => None,
                        }
                    }
                }
            };
            tokio::time::timeout(CANCEL_TIMEOUT, named)
                .await
                .ok()
                .flatten()
        }
    };
    match job_id {
        Some(id) => cancel_after_interrupt(&api, id).await,
        None => {
            eprintln!("The server had not named the job yet; see 'ci list' in case it was created.")
        }
    }
    Ok(ExitCode::from(EXIT_INTERRUPTED))
}

async fn cancel_after_interrupt(api: &ApiClient, job_id: JobId) {
    match tokio::time::timeout(CANCEL_TIMEOUT, api.cancel_job(job_id)).await {
        Ok(Ok(job)) => eprintln!("{}", cancel_outcome(&job)),
        Ok(Err(error)) => eprintln!("Could not cancel job {job_id} on the server: {error}"),
        Err(_) => eprintln!(
            "Could not cancel job {job_id} on the server: no answer within {}s",
            CANCEL_TIMEOUT.as_secs()
        ),
    }
}

/// `ci wait <job_id> [--all]`: print the job's output until it ends.
pub async fn wait(context: &Context, raw_job_id: &str, all: bool) -> anyhow::Result<ExitCode> {
    let job_id = parse_job_id(raw_job_id)?;
    let api = context.api()?;
    let sink = LogSink::default();
    let run = async {
        let from = if all {
            FollowFrom::Beginning
        } else {
            from_now(&api, job_id).await?
        };
        let mut events = api
            .follow_job(job_id, from)
            .await
            .map_err(about_job(job_id))?;
        let code = print_events(&mut events, &sink, |_| {}).await?;
        print_end_of_job_summary(&api, job_id).await;
        Ok(code)
    };
    let outcome = tokio::select! {
        outcome = run => Some(outcome),
        _ = tokio::signal::ctrl_c() => None,
    };
    match outcome {
        Some(result) => {
            if result.is_err() {
                sink.end_line();
            }
            result
        }
        None => {
            eprint!("\n\nStopped waiting for job {raw_job_id}.\n");
            eprintln!("The job continues to run on the server. Use 'ci wait' to reconnect.");
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
    }
}

/// Where "from now" is for a job, as a sequence number when the server tells
/// it: a stream opened "from now" that breaks before its first event could
/// otherwise only resume "from now" again and skip what was printed meanwhile.
/// An ended job keeps "from now", for which the server says it has completed;
/// so does a server that cannot answer yet (the stream retries on its own).
async fn from_now(api: &ApiClient, job_id: JobId) -> anyhow::Result<FollowFrom> {
    let job = match api.get_job(job_id).await {
        Ok(job) => job,
        Err(ClientError::Unreachable { .. }) => return Ok(FollowFrom::Now),
        Err(ClientError::Http { status, .. }) if status.is_server_error() => {
            return Ok(FollowFrom::Now)
        }
        Err(error) => return Err(about_job(job_id)(error)),
    };
    Ok(match job.last_event_id {
        Some(seq) if !job.status.is_terminal() => FollowFrom::After(seq),
        _ => FollowFrom::Now,
    })
}

/// `ci list [--json]`.
pub async fn list(context: &Context, json: bool) -> anyhow::Result<ExitCode> {
    let jobs = context.api()?.list_jobs().await?;
    let text = if json {
        let mut text = format_job_json(&jobs).context("cannot format the jobs as JSON")?;
        text.push('\n');
        text
    } else {
        format_job_table(&jobs)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write the job list")?;
    Ok(ExitCode::SUCCESS)
}

/// `ci cancel <job_id>`.
pub async fn cancel(context: &Context, raw_job_id: &str) -> anyhow::Result<ExitCode> {
    let job_id = parse_job_id(raw_job_id)?;
    let job = context
        .api()?
        .cancel_job(job_id)
        .await
        .map_err(about_job(job_id))?;
    println!("{}", cancel_outcome(&job));
    Ok(ExitCode::SUCCESS)
}

/// What a cancellation request achieved, from the job as the server answered.
fn cancel_outcome(job: &JobSummary) -> String {
    let id = job.job_id;
    match job.status {
        JobStatus::Cancelled => format!("Job {id} cancelled."),
        JobStatus::Completed => format!("Job {id} had already completed; nothing to cancel."),
        JobStatus::Queued | JobStatus::Running => {
            format!("Cancellation of job {id} requested; the server is stopping it.")
        }
    }
}

/// Prints a job's events until its `complete` event and turns its result into
/// the exit code. Announces the job id of a submit stream on stderr.
async fn print_events(
    events: &mut JobEvents,
    sink: &LogSink,
    mut on_job_id: impl FnMut(JobId),
) -> anyhow::Result<ExitCode> {
    while let Some(received) = events.next().await {
        match received?.event {
            StreamEvent::JobId { job_id: id } => {
                on_job_id(id);
                eprintln!("Job ID: {id}");
                eprintln!("You can reconnect from another terminal with: ci wait {id}");
                eprintln!();
            }
            StreamEvent::Log { data } => sink.write(&data)?,
            StreamEvent::Complete { success } => {
                return Ok(if success {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
        }
    }
    Err(anyhow!(
        "the server ended the stream without the job's result"
    ))
}

/// The project in the current directory as a zip, packed off the async
/// thread so Ctrl-C is still handled while a large project is read. Each
/// symbolic link left out gets one warning line on stderr.
async fn zip_current_dir() -> anyhow::Result<Vec<u8>> {
    let dir = std::env::current_dir().context("cannot find the current directory")?;
    let packed = tokio::task::spawn_blocking(move || pack_project(&dir))
        .await
        .context("packing the project stopped unexpectedly")?
        .context("cannot pack the project")?;
    for link in &packed.left_out {
        eprintln!("warning: {link}");
    }
    Ok(packed.zip)
}

/// A job id from the command line. Nothing that is not a UUID can name a
/// job, so it is "not found" without asking the server.
pub(crate) fn parse_job_id(raw: &str) -> anyhow::Result<JobId> {
    JobId::parse_str(raw.trim()).map_err(|_| anyhow!("Job not found: {raw:?} is not a job ID"))
}

/// Names the job in errors about that job (missing, someone else's).
pub(crate) fn about_job(job_id: JobId) -> impl FnOnce(ClientError) -> anyhow::Error {
    move |error| match error {
        ClientError::NotFound(_) | ClientError::Forbidden(_) => {
            anyhow::Error::new(error).context(format!("job {job_id}"))
        }
        other => other.into(),
    }
}

/// The job's output on stdout, exactly as received and flushed at once.
#[derive(Default)]
struct LogSink {
    /// The last output did not end with a newline.
    mid_line: std::cell::Cell<bool>,
}

impl LogSink {
    fn write(&self, data: &str) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(data.as_bytes())
            .and_then(|()| out.flush())
            .context("cannot write the job's output")?;
        if let Some(last) = data.chars().last() {
            self.mid_line.set(last != '\n');
        }
        Ok(())
    }

    /// Ends a half-written output line (on stderr) so that a message that
    /// follows starts on a line of its own.
    fn end_line(&self) {
        if self.mid_line.get() {
            eprintln!();
        }
    }
}
