//! `ci`, the user's command line for the CI service.

mod commands;
mod tests_command;

use std::io::IsTerminal;
use std::process::ExitCode;

use ci_client::config::{
    default_config_path, read_config_server_url, resolve_api_key_with_source, DEFAULT_SERVER_URL,
};
use ci_client::OutputMode;
use ci_common::{JobOptions, JobStatus};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "ci", about = "CI System CLI", version)]
struct Cli {
    /// URL of the CI server.
    #[arg(long, global = true, env = "CI_SERVER_URL", value_name = "URL")]
    server_url: Option<String>,

    /// API key for authentication. A key on the command line is visible to
    /// every user of this machine in the process list: prefer the CI_API_KEY
    /// env var or ~/.ci/config (api_key=<key>).
    #[arg(long, global = true, value_name = "KEY")]
    api_key: Option<String>,

    /// Write the job's output byte for byte, control sequences included,
    /// also on a terminal (by default a terminal gets only colours, other
    /// control characters shown escaped).
    #[arg(long, global = true)]
    raw: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit a job to the CI system.
    Submit {
        /// Type of job to submit.
        job_type: JobType,
        /// Submit job asynchronously and return job ID immediately.
        #[arg(long = "async")]
        async_mode: bool,
        /// With --async: print {"job_id": …} for scripts.
        #[arg(long, requires = "async_mode")]
        json: bool,
        /// With --async: print only the job id.
        #[arg(short, long, requires = "async_mode", conflicts_with = "json")]
        quiet: bool,
        /// List what would be uploaded, and its size, without uploading.
        #[arg(long)]
        dry_run: bool,
        /// Run on this Python (major.minor, e.g. 3.13) instead of the one the
        /// project's requires-python or the installation picks.
        #[arg(long, value_name = "X.Y")]
        python: Option<ci_common::PythonVersion>,
        /// The project the job belongs to (default: pyproject.toml's
        /// [project].name, else the folder's name).
        #[arg(long, value_name = "NAME")]
        project: Option<String>,
        /// Build the job's dependency environment anew.
        #[arg(long)]
        fresh_env: bool,
        /// Arguments for pytest, after `--` (e.g. `-- -k "not slow" -x`).
        #[arg(last = true, value_name = "PYTEST_ARGS")]
        pytest_args: Vec<String>,
    },
    /// Wait for a job to complete and stream logs.
    Wait {
        /// Job ID to wait for (or a unique prefix of at least 6 characters).
        job_id: String,
        /// Show all logs from beginning (default: only show new logs).
        #[arg(long)]
        all: bool,
    },
    /// List all jobs.
    List {
        /// Output in JSON format.
        #[arg(long)]
        json: bool,
        /// Show times in UTC instead of local time.
        #[arg(long)]
        utc: bool,
        /// Only the jobs of this project.
        #[arg(long, value_name = "NAME")]
        project: Option<String>,
        /// Only the jobs in this state (queued, running, completed, cancelled).
        #[arg(long, value_name = "STATUS", value_parser = parse_status)]
        status: Option<JobStatus>,
        /// At most N jobs (the newest that match).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Show a job's test results, or a project's test history.
    Tests {
        /// Job ID whose tests to show (or a unique prefix).
        #[arg(required_unless_present = "project", conflicts_with = "project")]
        job_id: Option<String>,
        /// Only the tests that failed (failures, errors, strict xpasses).
        #[arg(long, conflicts_with = "project")]
        failed: bool,
        /// A project's tests over your latest jobs of it, instead of one job's.
        #[arg(long, value_name = "NAME")]
        project: Option<String>,
        /// With --project: only the flaky tests (failed and passed on the same code).
        #[arg(long, requires = "project")]
        flaky: bool,
        /// With --project: the N tests with the longest median duration, slowest first.
        #[arg(long, value_name = "N", requires = "project")]
        slowest: Option<usize>,
        /// Output in JSON format.
        #[arg(long)]
        json: bool,
    },
    /// Ask the server to stop a job.
    Cancel {
        /// Job ID to cancel (or a unique prefix).
        job_id: String,
    },
    /// Show a job's summary: status, result, exit code, reason, times.
    Show {
        /// Job ID (or a unique prefix).
        job_id: String,
        /// Output in JSON format.
        #[arg(long)]
        json: bool,
    },
    /// Print a job's stored output, in any state, without following it.
    Logs {
        /// Job ID (or a unique prefix).
        job_id: String,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// Run a job's code again (same archive, no upload).
    Rerun {
        /// Job ID (or a unique prefix).
        job_id: String,
        /// Follow the new job's output until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Show which server and API key (masked) are in use, and where they come from.
    Config,
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// A `--status` value: one of the job statuses, by the API's name.
fn parse_status(raw: &str) -> Result<JobStatus, String> {
    raw.parse::<JobStatus>().map_err(|_| {
        let known: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
        format!("expected one of {}", known.join(", "))
    })
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum JobType {
    /// Run the project's tests.
    Test,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        // As the reference: bare `ci` shows the help and fails.
        let _ = Cli::command().print_help();
        return ExitCode::FAILURE;
    };
    let config_file = default_config_path();
    let server_from_env = std::env::var("CI_SERVER_URL").ok();
    let (server_url, server_source) = match cli.server_url.filter(|u| !u.trim().is_empty()) {
        Some(url) if server_from_env.as_deref() == Some(url.as_str()) => (url, "CI_SERVER_URL"),
        Some(url) => (url, "--server-url"),
        None => match config_file.as_deref().and_then(read_config_server_url) {
            Some(url) => (url, "~/.ci/config"),
            None => (DEFAULT_SERVER_URL.to_string(), "default"),
        },
    };
    let env_key = std::env::var("CI_API_KEY").ok();
    let key = resolve_api_key_with_source(
        cli.api_key.as_deref(),
        env_key.as_deref(),
        config_file.as_deref(),
    );
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let context = commands::Context {
        server_url,
        server_source,
        key_source: key.as_ref().map(|(_, source)| *source),
        api_key: key.map(|(key, _)| key),
        output: OutputMode::choose(cli.raw, std::io::stdout().is_terminal(), no_color),
    };
    let outcome = match command {
        Command::Submit {
            job_type: JobType::Test,
            dry_run: true,
            ..
        } => commands::dry_run().await,
        Command::Submit {
            job_type: JobType::Test,
            async_mode,
            json,
            quiet,
            python,
            project,
            fresh_env,
            pytest_args,
            ..
        } => {
            let options = JobOptions {
                python,
                project,
                fresh_env,
                pytest_args,
            };
            if async_mode {
                let print = match (json, quiet) {
                    (true, _) => commands::SubmittedAs::Json,
                    (_, true) => commands::SubmittedAs::BareId,
                    _ => commands::SubmittedAs::Sentence,
                };
                commands::submit_async(&context, print, &options).await
            } else {
                commands::submit_and_follow(&context, &options).await
            }
        }
        Command::Wait { job_id, all } => commands::wait(&context, &job_id, all).await,
        Command::List {
            json,
            utc,
            project,
            status,
            limit,
        } => {
            let filter = ci_client::output::JobFilter {
                project,
                status,
                limit,
            };
            commands::list(&context, json, utc, &filter).await
        }
        Command::Cancel { job_id } => commands::cancel(&context, &job_id).await,
        Command::Show { job_id, json } => commands::show(&context, &job_id, json).await,
        Command::Logs { job_id, tail } => commands::logs(&context, &job_id, tail).await,
        Command::Rerun { job_id, wait } => commands::rerun(&context, &job_id, wait).await,
        Command::Config => commands::config(&context),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ci", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Tests {
            project: Some(project),
            flaky,
            slowest,
            json,
            ..
        } => tests_command::project_tests(&context, &project, flaky, slowest, json).await,
        Command::Tests {
            job_id: Some(job_id),
            failed,
            json,
            ..
        } => tests_command::tests(&context, &job_id, failed, json).await,
        Command::Tests { .. } => {
            // clap requires a job id or --project.
            let _ = Cli::command().print_help();
            Ok(ExitCode::FAILURE)
        }
    };
    outcome.unwrap_or_else(|error| commands::report(&error))
}
