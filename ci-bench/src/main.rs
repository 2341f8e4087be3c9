//! `ci-bench`: run the benchmark suite and print the table and one
//! `BENCH …` line per figure on stdout (progress goes to stderr).
//! Exits non-zero only when something could not be measured, never for a
//! missed target, so CI catches a broken suite without flaking on a slow machine.

use anyhow::Context as _;
use ci_bench::report::{table, Figure};
use ci_bench::{load_average, machine_summary, run, Options};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let started = chrono::Utc::now();
    let load_before = load_average();
    let mut figures: Vec<Figure> = Vec::new();
    // On Ctrl-C or SIGTERM the run is dropped, and with it the systems, whose
    // Drop stops their processes and removes their containers.
    let result = tokio::select! {
        r = run(&options, &mut figures) => r.map_err(anyhow::Error::from),
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
    };

    println!(
        "# ci-bench {} ({}), database {}",
        started.format("%Y-%m-%d %H:%M UTC"),
        if options.quick { "quick" } else { "full" },
        if options.database_url.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    println!("# machine: {}", machine_summary());
    println!(
        "# load average before: {load_before}; after: {}",
        load_average()
    );
    println!();
    if !figures.is_empty() {
        print!("{}", table(&figures));
        println!();
        for figure in &figures {
            println!("{}", figure.machine_line());
        }
    }
    let missed = figures.iter().filter(|f| f.met() == Some(false)).count();
    if missed > 0 {
        eprintln!("ci-bench: {missed} target(s) missed (not an error)");
    }
    result.context("the benchmark could not finish")
}

/// Resolves on SIGINT or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
