//! `ci`, the user's command line for the CI service.

mod commands;
mod tests_command;

use std::process::ExitCode;

use ci_client::config::{default_config_path, resolve_api_key, DEFAULT_SERVER_URL};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "ci", about = "CI System CLI", version)]
struct Cli {
    /// URL of the CI server.
    #[arg(long, global = true, env = "CI_SERVER_URL", value_name = "URL")]
    server_url: Option<String>,

    /// API key for authentication (can also use CI_API_KEY env var or ~/.ci/config).
    #[arg(long, global = true, value_name = "KEY")]
    api_key: Option<String>,

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
    },
    /// Wait for a job to complete and stream logs.
    Wait {
        /// Job ID to wait for.
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
    },
    /// Show a job's test results.
    Tests {
        /// Job ID whose tests to show.
        job_id: String,
        /// Only the tests that failed (failures, errors, strict xpasses).
        #[arg(long)]
        failed: bool,
        /// Output in JSON format.
        #[arg(long)]
        json: bool,
    },
    /// Ask the server to stop a job.
    Cancel {
        /// Job ID to cancel.
        job_id: String,
    },
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
    let server_url = cli
        .server_url
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_SERVER_URL.to_string());
    let env_key = std::env::var("CI_API_KEY").ok();
    let api_key = resolve_api_key(
        cli.api_key.as_deref(),
        env_key.as_deref(),
        default_config_path().as_deref(),
    );
    let context = commands::Context {
        server_url,
        api_key,
    };
    let outcome = match command {
        Command::Submit {
            job_type: JobType::Test,
            async_mode: true,
        } => commands::submit_async(&context).await,
        Command::Submit {
            job_type: JobType::Test,
            async_mode: false,
        } => commands::submit_and_follow(&context).await,
        Command::Wait { job_id, all } => commands::wait(&context, &job_id, all).await,
        Command::List { json } => commands::list(&context, json).await,
        Command::Cancel { job_id } => commands::cancel(&context, &job_id).await,
        Command::Tests {
            job_id,
            failed,
            json,
        } => tests_command::tests(&context, &job_id, failed, json).await,
    };
    outcome.unwrap_or_else(|error| commands::report(&error))
}
