//! The `ci` subcommands: part of the binary, not the library, because they
//! print and decide exit codes. What they print is built in
//! [`ci_client::output`] where it can be tested.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use ci_client::config::{mask_key, KeySource};
use ci_client::output::{
    describe_end, format_job_details, format_job_json, format_job_table, JobFilter, AUTH_HELP,
};
use ci_client::{pack_project, project_name, ApiClient, ClientError, JobEvents, StreamStart};
use ci_client::{OutputFilter, OutputMode};
use ci_common::api::{JobSummary, StreamEvent};
use ci_common::{format_size, JobId, JobOptions, JobStatus};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::tests_command::print_end_of_job_summary;

/// The shell's convention for "ended by SIGINT".
const EXIT_INTERRUPTED: u8 = 130;
/// How long a Ctrl-C'd submit waits for the server to accept the cancellation.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// The settings every command needs, resolved from flags, env and config.
pub struct Context {
    pub server_url: String,
    /// Which setting named the server, for `ci config`.
    pub server_source: &'static str,
    pub api_key: Option<String>,
    /// Which source the key came from, for `ci config`.
    pub key_source: Option<KeySource>,
    /// How a job's output is written to stdout.
    pub output: OutputMode,
}

impl Context {
    /// The client for the server; warns (once per command) when the key
    /// would travel in the clear to another machine.
    pub(crate) fn api(&self) -> Result<ApiClient, ClientError> {
        let api = ApiClient::new(&self.server_url, self.api_key.clone())?.on_reconnect(|error| {
            eprintln!("Connection to the CI server lost, reconnecting… ({error})");
        });
        if api.sends_key_in_the_clear() {
            eprintln!(
                "warning: the API key is sent unencrypted to {} (plain http to another host); use https",
                api.base_url()
            );
        }
        Ok(api)
    }

    fn sink(&self) -> LogSink {
        LogSink::new(self.output)
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

/// How `ci submit test --async` names the job it queued.
pub enum SubmittedAs {
    /// `Job submitted: <id>`, the reference's line.
    Sentence,
    /// `{"job_id": "<id>"}` (`--json`).
    Json,
    /// The id alone (`-q`).
    BareId,
}

/// `ci submit test --async`.
pub async fn submit_async(
    context: &Context,
    print: SubmittedAs,
    options: &JobOptions,
) -> anyhow::Result<ExitCode> {
    let api = context.api()?;
    api.check_key().await?;
    let (zip, name) = zip_project().await?;
    let (uploader, bar) = with_upload_progress(&api, zip.len());
    let size = zip.len();
    let job_id = uploader.submit_async(zip, &named(options, name)).await;
    end_upload_progress(bar);
    let job_id = job_id.map_err(|e| explain_upload_failure(e, size))?;
    match print {
        SubmittedAs::Sentence => println!("Job submitted: {job_id}"),
        SubmittedAs::Json => println!("{}", serde_json::json!({ "job_id": job_id })),
        SubmittedAs::BareId => println!("{job_id}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `ci submit test --dry-run`: what would be uploaded, from where, and its
/// size; nothing is sent.
pub async fn dry_run() -> anyhow::Result<ExitCode> {
    let (zip, _) = zip_project().await?;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&zip))
        .context("cannot read back the packed project")?;
    let (mut files, mut total) = (0usize, 0u64);
    for i in 0..archive.len() {
        let entry = archive
            .by_index(i)
            .context("cannot read back the packed project")?;
        if entry.is_dir() {
            continue;
        }
        files += 1;
        total += entry.size();
        println!("{:>10}  {}", format_size(entry.size()), entry.name());
    }
    println!(
        "{files} files, {} ({} compressed); nothing was uploaded.",
        format_size(total),
        format_size(zip.len() as u64)
    );
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
pub async fn submit_and_follow(
    context: &Context,
    options: &JobOptions,
) -> anyhow::Result<ExitCode> {
    let api = context.api()?;
    // Refused keys are told before anything is packed or sent.
    api.check_key().await?;
    let (progress_tx, mut progress) = tokio::sync::watch::channel(SubmitProgress::Packing);
    let sink = context.sink();
    let run = async {
        let (zip, name) = zip_project().await?;
        progress_tx.send_replace(SubmitProgress::Uploading);
        let (uploader, bar) = with_upload_progress(&api, zip.len());
        let size = zip.len();
        let events = uploader.submit_stream(zip, &named(options, name)).await;
        end_upload_progress(bar);
        let mut events = events.map_err(|e| explain_upload_failure(e, size))?;
        let code = print_events(&api, &mut events, None, &sink, |id| {
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
    let api = context.api()?;
    let job_id = resolve_job_id(&api, raw_job_id).await?;
    follow(context, &api, job_id, all).await
}

/// Follows a job's output until it ends (from its start with `all`);
/// Ctrl-C stops following, not the job.
async fn follow(
    context: &Context,
    api: &ApiClient,
    job_id: JobId,
    all: bool,
) -> anyhow::Result<ExitCode> {
    let raw_job_id = job_id.to_string();
    let sink = context.sink();
    let run = async {
        let from = if all {
            StreamStart::Beginning
        } else {
            match from_now(api, job_id).await? {
                Joined::Follow(from) => from,
                Joined::Ended(job) => {
                    let code = report_ended(&job);
                    // How its tests went, as after a followed job.
                    if job.status != JobStatus::Cancelled {
                        print_end_of_job_summary(api, job_id).await;
                    }
                    return Ok(code);
                }
            }
        };
        let mut events = api
            .follow_job(job_id, from)
            .await
            .map_err(about_job(job_id))?;
        let code = print_events(api, &mut events, Some(job_id), &sink, |_| {}).await?;
        print_end_of_job_summary(api, job_id).await;
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

/// What joining a job "from now" found.
enum Joined {
    /// Follow its stream from here.
    Follow(StreamStart),
    /// It has ended already: nothing to follow.
    Ended(Box<JobSummary>),
}

/// Where "from now" is for a job, as a sequence number when the server tells
/// it: a stream opened "from now" that breaks before its first event could
/// otherwise only resume "from now" again and skip what was printed meanwhile.
/// A server that cannot answer yet keeps "from now" (the stream retries on
/// its own, and says so itself when the job has ended).
async fn from_now(api: &ApiClient, job_id: JobId) -> anyhow::Result<Joined> {
    let job = match api.get_job(job_id).await {
        Ok(job) => job,
        Err(ClientError::Unreachable { .. }) => return Ok(Joined::Follow(StreamStart::Now)),
        Err(ClientError::Http { status, .. }) if status.is_server_error() => {
            return Ok(Joined::Follow(StreamStart::Now))
        }
        Err(error) => return Err(about_job(job_id)(error)),
    };
    if job.status.is_terminal() {
        return Ok(Joined::Ended(Box::new(job)));
    }
    Ok(Joined::Follow(match job.last_event_id {
        Some(seq) => StreamStart::After(seq),
        None => StreamStart::Now,
    }))
}

/// `ci wait` on a job that has ended: how it ended, and how to see its
/// output; the exit code is the job's result. A completed job still gets
/// the reference's `Job already completed.` on stdout, which scripts match.
fn report_ended(job: &JobSummary) -> ExitCode {
    if job.status == JobStatus::Completed {
        println!("Job already completed.");
    }
    eprintln!("{}", describe_end(job));
    eprintln!(
        "Use 'ci wait --all {}' to replay its output, or 'ci logs {}'.",
        job.job_id, job.job_id
    );
    exit_code_of(job.success == Some(true))
}

/// `ci list [--json] [--utc]`.
pub async fn list(
    context: &Context,
    json: bool,
    utc: bool,
    filter: &JobFilter,
) -> anyhow::Result<ExitCode> {
    let jobs = filter.apply(context.api()?.list_jobs().await?);
    let text = if json {
        let mut text = format_job_json(&jobs).context("cannot format the jobs as JSON")?;
        text.push('\n');
        text
    } else if utc {
        format_job_table(&jobs, &chrono::Utc)
    } else {
        format_job_table(&jobs, &chrono::Local)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write the job list")?;
    Ok(ExitCode::SUCCESS)
}

/// `ci cancel <job_id>`.
pub async fn cancel(context: &Context, raw_job_id: &str) -> anyhow::Result<ExitCode> {
    let api = context.api()?;
    let job_id = resolve_job_id(&api, raw_job_id).await?;
    let job = api.cancel_job(job_id).await.map_err(about_job(job_id))?;
    println!("{}", cancel_outcome(&job));
    Ok(ExitCode::SUCCESS)
}

/// `ci show <job_id> [--json]`.
pub async fn show(context: &Context, raw_job_id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let api = context.api()?;
    let job_id = resolve_job_id(&api, raw_job_id).await?;
    let job = api.get_job(job_id).await.map_err(about_job(job_id))?;
    let text = if json {
        let mut text = serde_json::to_string_pretty(&job).context("cannot format the job")?;
        text.push('\n');
        text
    } else {
        format_job_details(&job, &chrono::Local)
    };
    write_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// `ci logs <job_id> [--tail N]`: the stored output, filtered for the
/// terminal as a followed job's is.
pub async fn logs(
    context: &Context,
    raw_job_id: &str,
    tail: Option<usize>,
) -> anyhow::Result<ExitCode> {
    let api = context.api()?;
    let job_id = resolve_job_id(&api, raw_job_id).await?;
    let mut pieces = api.job_log(job_id).await.map_err(about_job(job_id))?;
    let sink = context.sink();
    // The last N lines are only known at the end; up to then only N are kept.
    let mut last_lines = tail.map(LastLines::new);
    while let Some(piece) = pieces.next().await {
        let text = String::from_utf8_lossy(&piece?).into_owned();
        match last_lines.as_mut() {
            Some(lines) => lines.push(&text),
            None => sink.write(&text)?,
        }
    }
    if let Some(lines) = last_lines {
        sink.write(&lines.text())?;
    }
    sink.finish()?;
    sink.end_line();
    Ok(ExitCode::SUCCESS)
}

/// `ci rerun <job_id> [--wait]`.
pub async fn rerun(context: &Context, raw_job_id: &str, wait: bool) -> anyhow::Result<ExitCode> {
    let api = context.api()?;
    let job_id = resolve_job_id(&api, raw_job_id).await?;
    let again = api.rerun_job(job_id).await.map_err(about_job(job_id))?;
    if !wait {
        println!("Job submitted: {again}");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("Job ID: {again}");
    eprintln!("You can reconnect from another terminal with: ci wait {again}");
    eprintln!();
    follow(context, &api, again, true).await
}

/// `ci config`: the server and key in use and where each came from.
pub fn config(context: &Context) -> anyhow::Result<ExitCode> {
    let api = ApiClient::new(&context.server_url, None)?;
    let mut text = format!(
        "Server:  {} (from {})\n",
        api.base_url(),
        context.server_source
    );
    match (&context.api_key, context.key_source) {
        (Some(key), Some(source)) => {
            text.push_str(&format!("API key: {} (from {source})\n", mask_key(key)));
        }
        _ => text.push_str("API key: none (set --api-key, CI_API_KEY or ~/.ci/config)\n"),
    }
    write_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// The last `n` lines of a text that arrives in pieces.
struct LastLines {
    n: usize,
    lines: std::collections::VecDeque<String>,
}

impl LastLines {
    fn new(n: usize) -> Self {
        LastLines {
            n,
            lines: std::collections::VecDeque::new(),
        }
    }

    fn push(&mut self, text: &str) {
        for piece in text.split_inclusive('\n') {
            match self.lines.back_mut() {
                Some(last) if !last.ends_with('\n') => last.push_str(piece),
                _ => self.lines.push_back(piece.to_string()),
            }
            while self.lines.len() > self.n {
                self.lines.pop_front();
            }
        }
        if self.n == 0 {
            self.lines.clear();
        }
    }

    fn text(&self) -> String {
        self.lines.iter().map(String::as_str).collect()
    }
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
    api: &ApiClient,
    events: &mut JobEvents,
    known_job: Option<JobId>,
    sink: &LogSink,
    mut on_job_id: impl FnMut(JobId),
) -> anyhow::Result<ExitCode> {
    let mut job_id = known_job;
    let mut queued = QueuedLine { shown: false };
    let watch_queue = std::io::stderr().is_terminal();
    let mut seen_output = false;
    let mut poll = tokio::time::interval(QUEUE_POLL);
    loop {
        let received = match job_id {
            Some(id) if watch_queue && !seen_output => tokio::select! {
                received = events.next() => received,
                _ = poll.tick() => {
                    queued.refresh(api, id).await;
                    continue;
                }
            },
            _ => events.next().await,
        };
        let Some(received) = received else { break };
        let received = received?;
        if matches!(
            received.event,
            StreamEvent::Log { .. } | StreamEvent::Complete { .. }
        ) {
            seen_output = true;
            queued.clear();
        }
        match received.event {
            StreamEvent::JobId { job_id: id } => {
                job_id = Some(id);
                on_job_id(id);
                eprintln!("Job ID: {id}");
                eprintln!("You can reconnect from another terminal with: ci wait {id}");
                eprintln!();
            }
            StreamEvent::Log { data } => sink.write(&data)?,
            StreamEvent::Complete { success, status } => {
                sink.finish()?;
                sink.end_line();
                eprintln!("{}", closing_line(api, job_id, success, status).await);
                return Ok(exit_code_of(success));
            }
            StreamEvent::Error {
                detail,
                status_code,
            } => {
                sink.finish()?;
                sink.end_line();
                return Err(stream_refused(job_id, detail, status_code));
            }
        }
    }
    Err(anyhow!(
        "the server ended the stream without the job's result"
    ))
}

/// The error of a stream the server ended with an `error` event: the same
/// error as the HTTP answer it stands for (a revoked key's 401 is an
/// authentication failure, with its help), saying that the job goes on.
fn stream_refused(
    job_id: Option<JobId>,
    detail: String,
    status_code: Option<u16>,
) -> anyhow::Error {
    let error = match status_code.and_then(|code| reqwest::StatusCode::from_u16(code).ok()) {
        Some(status) => ClientError::from_status(status, detail),
        None => ClientError::StreamEnded(detail),
    };
    let stopped = match job_id {
        Some(id) => format!("the server stopped streaming job {id}, which goes on"),
        None => "the server stopped the stream".to_string(),
    };
    anyhow::Error::new(error).context(stopped)
}

/// An upload the connection broke under, after the server took the key:
/// the usual cause is a server that refused the size (413) and closed the
/// connection before its answer could be read, which says only "broken
/// pipe". The error keeps the cause, with what most likely happened.
fn explain_upload_failure(error: ClientError, size: usize) -> anyhow::Error {
    match error {
        ClientError::Unreachable { .. } => anyhow::Error::new(error).context(format!(
            "the CI server closed the connection during the upload of {} (a server \
             refuses an upload over its limit, CI_MAX_UPLOAD_BYTES, 100 MiB by default, that way)",
            format_size(size as u64)
        )),
        other => other.into(),
    }
}

/// Uploads from this size on show a progress bar, on a terminal only.
const PROGRESS_FROM_BYTES: usize = 4 * 1024 * 1024;

/// A client that draws the upload's progress on stderr when that is a
/// terminal and the upload is big enough for a wait to be noticed.
fn with_upload_progress(api: &ApiClient, size: usize) -> (ApiClient, Option<ProgressBar>) {
    if size < PROGRESS_FROM_BYTES || !std::io::stderr().is_terminal() {
        return (api.clone(), None);
    }
    let bar = ProgressBar::new(size as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "Uploading {bar:30} {decimal_bytes}/{decimal_total_bytes} ({decimal_bytes_per_sec})",
    ) {
        bar.set_style(style);
    }
    let shown = bar.clone();
    let api = api
        .clone()
        .on_upload_progress(move |sent| shown.set_position(sent));
    (api, Some(bar))
}

/// Replaces the bar with one line saying what was sent.
fn end_upload_progress(bar: Option<ProgressBar>) {
    if let Some(bar) = bar {
        bar.finish_and_clear();
        eprintln!("Uploaded {}.", format_size(bar.length().unwrap_or(0)));
    }
}

/// While a followed job is queued, how often its place is looked up.
const QUEUE_POLL: Duration = Duration::from_secs(2);

/// The status line of a queued job, on stderr while it is a terminal:
/// shown until the job's first output, then cleared.
struct QueuedLine {
    shown: bool,
}

impl QueuedLine {
    /// Looks the job up and shows whether it still waits, and its place in
    /// the whole queue (the server's `queue_position`: submit order across
    /// all users). A server without that field gives the place among the
    /// caller's own queued jobs, the only ones a user may list.
    async fn refresh(&mut self, api: &ApiClient, job_id: JobId) {
        let Ok(Ok(job)) = tokio::time::timeout(QUEUE_POLL, api.get_job(job_id)).await else {
            return;
        };
        if job.status != JobStatus::Queued {
            self.clear();
            return;
        }
        let place = match job.queue_position {
            Some(position) => format!("position {position} in the queue"),
            None => {
                let Ok(Ok(jobs)) = tokio::time::timeout(QUEUE_POLL, api.list_jobs()).await else {
                    return;
                };
                let ahead = jobs
                    .iter()
                    .filter(|j| j.status == JobStatus::Queued && j.submitted_at < job.submitted_at)
                    .count();
                format!("position {} among your queued jobs", ahead + 1)
            }
        };
        eprint!("\r\x1b[2KJob {job_id} is queued, waiting for a free runner ({place})…");
        self.shown = true;
    }

    fn clear(&mut self) {
        if std::mem::take(&mut self.shown) {
            eprint!("\r\x1b[2K");
        }
    }
}

/// The one line `ci` ends a followed job with, on stderr: the result, exit
/// code and duration from the job's summary, or what the stream said when
/// the summary cannot be had.
async fn closing_line(
    api: &ApiClient,
    job_id: Option<JobId>,
    success: bool,
    status: Option<JobStatus>,
) -> String {
    let Some(id) = job_id else {
        return match (status, success) {
            (Some(JobStatus::Cancelled), _) => "The job was cancelled.".to_string(),
            (_, true) => "The job passed.".to_string(),
            (_, false) => "The job failed.".to_string(),
        };
    };
    match tokio::time::timeout(CANCEL_TIMEOUT, api.get_job(id)).await {
        Ok(Ok(job)) if job.status.is_terminal() => describe_end(&job),
        _ => {
            let mut job = JobSummary::new(id, status.unwrap_or(JobStatus::Completed));
            job.success = (job.status == JobStatus::Completed).then_some(success);
            describe_end(&job)
        }
    }
}

/// The project the current directory belongs to, as a zip, packed off the
/// async thread so Ctrl-C is still handled while a large project is read.
/// Each symbolic link left out gets one warning line on stderr; a project
/// with no files is refused before anything is sent.
/// The project around the current folder, packed, and its name.
async fn zip_project() -> anyhow::Result<(Vec<u8>, Option<String>)> {
    let cwd = std::env::current_dir().context("cannot find the current directory")?;
    let root = project_root(&cwd);
    let name = project_name(&root);
    if root != cwd {
        eprintln!("Uploading the project at {}", root.display());
    }
    let dir = root.clone();
    let packed = tokio::task::spawn_blocking(move || pack_project(&dir))
        .await
        .context("packing the project stopped unexpectedly")?
        .context("cannot pack the project")?;
    for link in &packed.left_out {
        eprintln!("warning: {link}");
    }
    let files = zip::ZipArchive::new(std::io::Cursor::new(&packed.zip))
        .map(|archive| archive.file_names().filter(|n| !n.ends_with('/')).count())
        .context("cannot read back the packed project")?;
    if files == 0 {
        return Err(anyhow!(
            "nothing to upload: {} has no files (dot-files, dot-folders and what .gitignore ignores are left out)",
            root.display()
        ));
    }
    Ok((packed.zip, name))
}

/// `options` with the project's name when none was given.
fn named(options: &JobOptions, name: Option<String>) -> JobOptions {
    JobOptions {
        project: options.project.clone().or(name),
        ..options.clone()
    }
}

/// What marks a project's root folder.
const PROJECT_MARKERS: [&str; 5] = [
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "requirements.txt",
    ".git",
];

/// The nearest folder from `start` upwards that holds a project marker, or
/// `start` itself when none does.
fn project_root(start: &std::path::Path) -> std::path::PathBuf {
    start
        .ancestors()
        .find(|dir| PROJECT_MARKERS.iter().any(|m| dir.join(m).exists()))
        .unwrap_or(start)
        .to_path_buf()
}

/// The job a command names: a whole UUID, or a unique prefix of at least
/// [`MIN_PREFIX`] characters of one of the caller's jobs. Nothing else can
/// name a job, so it is "not found" without asking the server.
pub(crate) async fn resolve_job_id(api: &ApiClient, raw: &str) -> anyhow::Result<JobId> {
    let raw = raw.trim();
    if let Ok(id) = raw.parse::<JobId>() {
        return Ok(id);
    }
    let prefix = raw.to_ascii_lowercase();
    let looks_like_prefix =
        prefix.len() >= MIN_PREFIX && prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if !looks_like_prefix {
        return Err(anyhow!(
            "Job not found: {raw:?} is not a job ID (give the ID or at least {MIN_PREFIX} of its first characters)"
        ));
    }
    let matches: Vec<JobSummary> = api
        .list_jobs()
        .await?
        .into_iter()
        .filter(|job| job.job_id.to_string().starts_with(&prefix))
        .collect();
    match matches.as_slice() {
        [] => Err(anyhow!(
            "Job not found: none of your jobs starts with {raw}"
        )),
        [job] => Ok(job.job_id),
        many => {
            let ids: Vec<String> = many
                .iter()
                .map(|j| format!("  {} ({})", j.job_id, j.status))
                .collect();
            Err(anyhow!(
                "{raw} is ambiguous: it starts {} of your jobs:\n{}",
                many.len(),
                ids.join("\n")
            ))
        }
    }
}

/// The shortest job-id prefix taken: 6 hex digits make a collision among
/// one user's jobs unlikely, and are still easy to type.
const MIN_PREFIX: usize = 6;

/// Names the job in errors about that job (missing, someone else's).
pub(crate) fn about_job(job_id: JobId) -> impl FnOnce(ClientError) -> anyhow::Error {
    move |error| match error {
        ClientError::NotFound(_) | ClientError::Forbidden(_) => {
            anyhow::Error::new(error).context(format!("job {job_id}"))
        }
        other => other.into(),
    }
}

fn exit_code_of(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The job's output on stdout, filtered for where stdout goes (see
/// [`OutputMode`]) and flushed at once.
struct LogSink {
    filter: std::cell::RefCell<OutputFilter>,
    /// The last output did not end with a newline.
    mid_line: std::cell::Cell<bool>,
}

impl LogSink {
    fn new(mode: OutputMode) -> Self {
        LogSink {
            filter: std::cell::RefCell::new(OutputFilter::new(mode)),
            mid_line: std::cell::Cell::new(false),
        }
    }

    fn write(&self, data: &str) -> anyhow::Result<()> {
        let text = self.filter.borrow_mut().filter(data);
        self.write_filtered(&text)
    }

    /// Writes what the filter still holds (an unfinished escape sequence).
    fn finish(&self) -> anyhow::Result<()> {
        let text = self.filter.borrow_mut().finish();
        self.write_filtered(&text)
    }

    fn write_filtered(&self, text: &str) -> anyhow::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .context("cannot write the job's output")?;
        if let Some(last) = text.chars().last() {
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
