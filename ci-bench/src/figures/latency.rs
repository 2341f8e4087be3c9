//! Figure 2: how soon a job starts. From the moment the API has committed a
//! queued job (the `/submit-async` answer arrives) to the container's start
//! (the engine's `docker events` time, matched by the job-id label), and to the
//! first output line reaching a client that opened the job's stream right after
//! submitting. Baseline, interleaved: the controller's own container spec by
//! hand through the CLI (`docker create -i` + `docker start -a -i`) with an
//! empty project on its standard input, timed from before the create.

use std::time::{Duration, Instant, SystemTime};

use ci_common::api::StreamEvent;
use ci_controller::runtime::LABEL_INSTALLATION;

use super::{ms, progress, Context};
use crate::docker::{empty_project, StartEvents, LABEL_BENCH};
use crate::error::{BenchError, Result};
use crate::http::EventStream;
use crate::report::{Figure, Target};
use crate::stats::percentile;
use crate::system::System;

/// Queued → container started.
pub const TARGET_START_P50_MS: f64 = 50.0;
pub const TARGET_START_P95_MS: f64 = 150.0;
/// First line may come at most this much later than by hand.
pub const TARGET_FIRST_LINE_EXTRA_MS: f64 = 100.0;

const EVENT_WAIT: Duration = Duration::from_secs(30);
const JOB_WAIT: Duration = Duration::from_secs(300);

pub async fn measure(system: &System, key: &str, ctx: &Context<'_>) -> Result<Vec<Figure>> {
    let api = system.api(key)?;
    let manual = system.manual_job();
    let zip = &ctx.fixtures.passing.zip;
    let since = SystemTime::now() - Duration::from_secs(1);
    let job_events =
        StartEvents::watch(&format!("{LABEL_INSTALLATION}={}", system.prefix), since).await?;
    let bare_events =
        StartEvents::watch(&format!("{LABEL_BENCH}={}", system.prefix), since).await?;

    let n = ctx.plan.latency_jobs;
    let (mut to_start, mut to_first) = (Vec::new(), Vec::new());
    let (mut bare_start, mut bare_first) = (Vec::new(), Vec::new());
    for i in 0..n {
        let id = api.submit_async(zip).await?;
        let (queued_wall, queued) = (SystemTime::now(), Instant::now());
        let mut stream = EventStream::open(system.addr, key, id).await?;
        let first = tokio::time::timeout(JOB_WAIT, follow_to_end(&mut stream, id))
            .await
            .map_err(|_| BenchError::timeout(format!("job {id} to end"), JOB_WAIT))??;
        let started = job_events.started(&id.to_string(), EVENT_WAIT).await?;
        to_start.push(signed_ms(started, queued_wall));
        to_first.push(ms(first - queued));

        let bare = manual.run(&empty_project(), None).await?;
        let line = bare.first_line.ok_or_else(|| {
            BenchError::protocol("docker start -a -i", "the bare container printed nothing")
        })?;
        bare_first.push(ms(line - bare.started));
        let bare_started = bare_events.started(&bare.id, EVENT_WAIT).await?;
        bare_start.push(signed_ms(bare_started, bare.started_wall));
        if (i + 1) % 10 == 0 || i + 1 == n {
            progress(format!("start latency: {}/{n} jobs", i + 1));
        }
    }
    job_events.stop().await;
    bare_events.stop().await;

    let p = |v: &[f64], q: f64| percentile(v, q).unwrap_or(f64::NAN);
    let bare_first_p50 = p(&bare_first, 50.0);
    Ok(vec![
        Figure::new(
            "start_queued_to_start_p50_ms",
            "2 queued -> container started, p50",
            p(&to_start, 50.0),
            "ms",
        )
        .baseline(p(&bare_start, 50.0), "ms")
        .target(Target::AtMost(TARGET_START_P50_MS))
        .extra("jobs", n)
        .extra("baseline_is", "docker_create+start_via_CLI"),
        Figure::new(
            "start_queued_to_start_p95_ms",
            "2 queued -> container started, p95",
            p(&to_start, 95.0),
            "ms",
        )
        .baseline(p(&bare_start, 95.0), "ms")
        .target(Target::AtMost(TARGET_START_P95_MS))
        .extra("jobs", n),
        Figure::new(
            "start_first_line_p50_ms",
            "2 queued -> first line at a streaming client, p50",
            p(&to_first, 50.0),
            "ms",
        )
        .baseline(bare_first_p50, "ms")
        .target(Target::AtMost(bare_first_p50 + TARGET_FIRST_LINE_EXTRA_MS))
        .extra("jobs", n)
        .extra("baseline_is", "docker_create+start_-a_first_line"),
        Figure::new(
            "start_first_line_p95_ms",
            "2 queued -> first line at a streaming client, p95",
            p(&to_first, 95.0),
            "ms",
        )
        .baseline(p(&bare_first, 95.0), "ms")
        .extra("jobs", n),
    ])
}

/// Reads the stream until the job's `complete` event; when the first output came.
async fn follow_to_end(stream: &mut EventStream, id: ci_common::JobId) -> Result<Instant> {
    let mut first = None;
    loop {
        match stream.next_event().await? {
            Some(StreamEvent::Log { .. }) if first.is_none() => first = Some(Instant::now()),
            Some(StreamEvent::Complete { success: true, .. }) => break,
            Some(StreamEvent::Complete { success: false, .. }) => {
                return Err(BenchError::protocol(
                    format!("job {id}"),
                    "the passing project failed",
                ))
            }
            Some(_) => {}
            None => {
                return Err(BenchError::protocol(
                    format!("GET /jobs/{id}/stream"),
                    "the stream ended before the job did",
                ))
            }
        }
    }
    first.ok_or_else(|| BenchError::protocol(format!("job {id}"), "the job printed nothing"))
}

/// `later - earlier` in milliseconds, negative when the clock says otherwise.
fn signed_ms(later: SystemTime, earlier: SystemTime) -> f64 {
    match later.duration_since(earlier) {
        Ok(d) => ms(d),
        Err(e) => -ms(e.duration()),
    }
}
