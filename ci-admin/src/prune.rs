//! `ci-admin prune`: what the controller's reaper does in small steps over
//! time, done at once, with a report of what went (or, with `--dry-run`,
//! would go).

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use ci_common::format_size as bytes;
use ci_common::time::to_api_string;
use ci_config::format_duration;
use ci_persistence::{ReapStep, Reaped, Store, ARCHIVE_GRACE};

/// Free pages given back per step: a step is a short write, so services
/// running beside `prune` wait for the writer no longer than that.
const PAGES_PER_STEP: u32 = 1024;

/// What the operator asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prune {
    pub older_than: Duration,
    pub dry_run: bool,
    pub rewrite_file: bool,
}

pub(crate) async fn prune(store: &Store, request: Prune, out: &mut impl Write) -> Result<()> {
    let now = Utc::now();
    let ended_before = chrono::Duration::from_std(request.older_than)
        .ok()
        .and_then(|age| now.checked_sub_signed(age))
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
    let uploaded_before =
        now - chrono::Duration::from_std(ARCHIVE_GRACE).unwrap_or(chrono::Duration::zero());
    let pages = store
        .file_pages()
        .await
        .context("cannot read the database file's pages")?;

    if request.dry_run {
        let counted = store
            .count_reapable(ended_before, uploaded_before)
            .await
            .context("cannot count what would be removed")?;
        writeln!(
            out,
            "Dry run: nothing removed. Would remove what ended more than {} ago (before {}):",
            format_duration(request.older_than),
            to_api_string(ended_before)
        )?;
        write_counts(out, &counted)?;
        return Ok(());
    }

    let mut reaped = Reaped::default();
    let step = ReapStep::default();
    // Jobs first: their archives are unreferenced only once they are gone.
    loop {
        let one = store
            .reap_ended_jobs(ended_before, &step)
            .await
            .context("cannot remove ended jobs")?;
        if one.is_empty() {
            break;
        }
        reaped += one;
    }
    loop {
        let one = store
            .reap_unreferenced_archives(uploaded_before, &step)
            .await
            .context("cannot remove unreferenced archives")?;
        if one.is_empty() {
            break;
        }
        reaped += one;
    }
    loop {
        let one = store
            .reap_ended_sessions(&step)
            .await
            .context("cannot remove ended sessions")?;
        if one.is_empty() {
            break;
        }
        reaped += one;
    }
    writeln!(
        out,
        "✓ Removed what ended more than {} ago (before {}):",
        format_duration(request.older_than),
        to_api_string(ended_before)
    )?;
    write_counts(out, &reaped)?;

    let Some(pages) = pages else {
        writeln!(out, "  space: PostgreSQL's autovacuum reclaims it")?;
        return Ok(());
    };
    if pages.incremental {
        let mut given = 0u64;
        loop {
            let n = store
                .give_back_free_pages(PAGES_PER_STEP)
                .await
                .context("cannot give free pages back")?;
            if n == 0 {
                break;
            }
            given += n;
        }
        writeln!(
            out,
            "  space given back to the file system: {}",
            bytes(given * pages.page_size)
        )?;
    } else if request.rewrite_file {
        let size = |p: ci_persistence::FilePages| p.pages * p.page_size;
        let before = store.file_pages().await?.map(size).unwrap_or(0);
        store
            .rewrite_for_incremental_vacuum()
            .await
            .context("cannot rewrite the database file (it is left as it was)")?;
        let after = store.file_pages().await?.map(size).unwrap_or(0);
        writeln!(
            out,
            "  database file rewritten: {} → {}; from now on it gives freed space back by itself",
            bytes(before),
            bytes(after)
        )?;
    } else {
        writeln!(
            out,
            "  This database file predates incremental auto-vacuum: the freed space ({}) is reused,\n  \
             but given back to the file system only after the file is rewritten once. Stop the services\n  \
             and run 'ci-admin prune --rewrite-file' (it needs free disk space of the file's size).",
            bytes(store.file_pages().await?.map(|p| p.free * p.page_size).unwrap_or(0))
        )?;
    }
    Ok(())
}

/// The counts, one a line, the same for a dry run and a real one.
fn write_counts(out: &mut impl Write, counts: &Reaped) -> Result<()> {
    writeln!(out, "  jobs:          {}", counts.jobs)?;
    writeln!(out, "  output chunks: {}", counts.log_chunks)?;
    writeln!(out, "  test results:  {}", counts.test_cases)?;
    writeln!(
        out,
        "  archives:      {} ({})",
        counts.archives,
        bytes(counts.archive_bytes)
    )?;
    writeln!(out, "  sessions:      {}", counts.sessions)?;
    Ok(())
}
