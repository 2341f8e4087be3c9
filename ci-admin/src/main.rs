//! `ci-admin`: parse, open the database, run one command. Every failure is one
//! `Error: …` line on stderr and exit code 1, never a panic.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ci_admin::Cli;
use ci_persistence::DatabaseLocation;
use ci_persistence::{Store, StoreError};
use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Nothing better to do if stderr itself is gone.
            let _ = writeln!(std::io::stderr(), "Error: {}", ci_admin::error_message(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    ci_admin::check(&cli.command)?;
    let location = cli.database.location();
    if let DatabaseLocation::SqliteFile(path) = &location {
        if !ci_admin::may_create_database(&cli.command) && !path.exists() {
            bail!(
                "no database at {} (check CI_DB_PATH / --db-path; only 'ci-admin user create' creates one)",
                path.display()
            );
        }
    }
    let store = match Store::open(&location).await {
        Ok(store) => store,
        // Its message would repeat the URL, password and all.
        Err(StoreError::UnsupportedUrl(_)) => {
            bail!("unsupported database URL (expected sqlite:// or postgres://)")
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot open the database {}", location.describe()))
        }
    };
    let mut out = std::io::stdout().lock();
    let result = ci_admin::run(&store, cli.command, &mut out).await;
    store.close().await;
    result?;
    out.flush().context("cannot write the output")
}
