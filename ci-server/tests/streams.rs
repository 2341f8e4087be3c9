//! The event streams: `GET /jobs/{id}/stream`, `POST /submit-stream`,
//! `POST /submit`, reconnection, replicas, and graceful shutdown. The tests
//! play the controller through the store while a stream is open.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use ci_common::api::StreamEvent;
use ci_common::{JobId, JobStatus};
use ci_persistence::{JobOutcome, Store};
use ci_server::ServerConfig;
use support::{
    error_detail, log, project_zip, spawn_app, spawn_app_with, test_config, within, zip_form,
    Received, SseItem, SseStream, TestApp,
};

/// Checks a `complete` event's result; the status it carries, when it
/// carries one, must be an ended one (the cases are pinned on their own).
#[track_caller]
fn assert_complete(event: &StreamEvent, success: bool) {
    match event {
        StreamEvent::Complete {
            success: got,
            status,
        } => {
            assert_eq!(*got, success, "{event:?}");
            assert!(status.is_none_or(|s| s.is_terminal()), "{event:?}");
        }
        other => panic!("expected the complete event, got {other:?}"),
    }
}

async fn append(store: &Store, job: JobId, chunks: &[&str]) -> i64 {
    let chunks: Vec<String> = chunks.iter().map(|c| c.to_string()).collect();
    store.append_log(job, &chunks, None).await.unwrap()
}

/// The `complete` event, which must be the last: nothing may follow it.
async fn expect_complete(stream: &mut SseStream, success: bool) -> Received {
    let event = stream.expect_event().await;
    assert_complete(&event.event, success);
    stream.expect_end().await;
    event
}

/// A running job with output `1\n` … `n\n` (sequence numbers 1 … n).
async fn running_job_with_output(app: &TestApp, n: i64) -> JobId {
    let job = app.submit_async().await;
    app.store
        .mark_running(job, "container", "image", None)
        .await
        .unwrap();
    for i in 1..=n {
        append(&app.store, job, &[&format!("{i}\n")]).await;
    }
    job
}

fn logs(range: std::ops::RangeInclusive<i64>) -> Vec<Received> {
    range.map(|i| log(i, &format!("{i}\n"))).collect()
}

#[tokio::test]
async fn from_beginning_replays_everything_then_follows_until_complete() {
    let app = spawn_app().await;
    let job = running_job_with_output(&app, 2).await;

    let mut stream = app.stream(job, "?from_beginning=true", None).await;
    assert_eq!(stream.take(2).await, logs(1..=2));

    // Live output while the stream is open, one chunk and then a batch.
    append(&app.store, job, &["3\n"]).await;
    assert_eq!(stream.expect_event().await, log(3, "3\n"));
    append(&app.store, job, &["4\n", "5\n"]).await;
    assert_eq!(stream.take(2).await, logs(4..=5));

    app.store
        .finish_job(job, &JobOutcome::exited(0))
        .await
        .unwrap();
    let done = expect_complete(&mut stream, true).await;
    // Reconnecting from the complete event's id (if it has one) loses nothing.
    assert!(done.id.is_none_or(|id| id <= 5), "{done:?}");
}

#[tokio::test]
async fn from_beginning_accepts_the_reference_spellings_of_true() {
    let app = spawn_app().await;
    let job = running_job_with_output(&app, 1).await;
    app.store
        .finish_job(job, &JobOutcome::exited(1))
        .await
        .unwrap();
    for value in ["true", "True", "1"] {
        let mut stream = app
            .stream(job, &format!("?from_beginning={value}"), None)
            .await;
        assert_eq!(stream.expect_event().await, log(1, "1\n"), "{value}");
        expect_complete(&mut stream, false).await;
    }
}

#[tokio::test]
async fn without_parameters_only_new_output_is_sent() {
    let app = spawn_app().await;
    let job = running_job_with_output(&app, 2).await;

    // Once the response has started, whatever is appended is sent, and
    // nothing from before.
    let mut stream = app.stream(job, "", None).await;
    append(&app.store, job, &["3\n"]).await;
    assert_eq!(stream.expect_event().await, log(3, "3\n"));
    append(&app.store, job, &["4\n"]).await;
    assert_eq!(stream.expect_event().await, log(4, "4\n"));
    app.store
        .finish_job(job, &JobOutcome::exited(1))
        .await
        .unwrap();
    expect_complete(&mut stream, false).await;
}

#[tokio::test]
async fn a_queued_job_streams_from_its_first_output() {
    let app = spawn_app().await;
    let job = app.submit_async().await;
    let mut stream = app.stream(job, "", None).await;
    let mut replay = app.stream(job, "?from_beginning=true", None).await;
    app.store.mark_running(job, "c", "i", None).await.unwrap();
    append(&app.store, job, &["first\n"]).await;
    app.store
        .finish_job(job, &JobOutcome::exited(0))
        .await
        .unwrap();
    for s in [&mut stream, &mut replay] {
        assert_eq!(s.expect_event().await, log(1, "first\n"));
        expect_complete(s, true).await;
    }
}

#[tokio::test]
async fn an_ended_job_without_parameters_says_it_already_completed() {
    let app = spawn_app().await;
    for (outcome, success) in [
        (JobOutcome::exited(0), true),
        (JobOutcome::exited(2), false),
        (JobOutcome::cancelled(), false),
    ] {
        let job = running_job_with_output(&app, 3).await;
        app.store.finish_job(job, &outcome).await.unwrap();
        let mut stream = app.stream(job, "", None).await;
        let first = stream.expect_event().await;
        assert_eq!(
            first.event,
            StreamEvent::Log {
                data: "Job already completed.\n".to_string()
            }
        );
        // Its id, if any, is a point to resume from that repeats nothing.
        assert!(first.id.is_none_or(|id| id == 3), "{first:?}");
        expect_complete(&mut stream, success).await;
    }
}

#[tokio::test]
async fn after_and_last_event_id_give_exactly_the_events_after_n() {
    let app = spawn_app().await;
    let job = running_job_with_output(&app, 5).await;
    app.store
        .finish_job(job, &JobOutcome::exited(0))
        .await
        .unwrap();

    for n in 0..=5 {
        let mut by_query = app.stream(job, &format!("?after={n}"), None).await;
        let mut by_header = app.stream(job, "", Some(n)).await;
        // `after` wins over `from_beginning`, as a reconnecting `--all` client sends both.
        let mut both = app.stream(job, "?from_beginning=true", Some(n)).await;
        for s in [&mut by_query, &mut by_header, &mut both] {
            let events = s.rest().await;
            let (last, rest) = events.split_last().unwrap();
            assert_eq!(rest, logs(n + 1..=5), "after {n}");
            assert_complete(&last.event, true);
        }
    }
}

#[tokio::test]
async fn resuming_after_the_job_ended_meanwhile_loses_and_repeats_nothing() {
    let app = spawn_app().await;
    let job = running_job_with_output(&app, 3).await;

    let mut stream = app.stream(job, "?from_beginning=true", None).await;
    let seen = stream.take(2).await;
    assert_eq!(seen, logs(1..=2));
    let last_seen = seen.last().unwrap().id.unwrap();
    drop(stream);

    // While nobody listens: more output, and the end.
    append(&app.store, job, &["4\n", "5\n"]).await;
    append(&app.store, job, &["6\n"]).await;
    app.store
        .finish_job(job, &JobOutcome::exited(0))
        .await
        .unwrap();

    let mut by_header = app.stream(job, "", Some(last_seen)).await;
    let mut by_query = app.stream(job, &format!("?after={last_seen}"), None).await;
    for s in [&mut by_header, &mut by_query] {
        assert_eq!(s.take(4).await, logs(3..=6));
        expect_complete(s, true).await;
    }
}

#[tokio::test]
async fn resuming_a_running_job_follows_it() {
    let app = spawn_app().await;
    let job = running_job_with_output(&app, 4).await;
    let mut stream = app.stream(job, "", Some(2)).await;
    assert_eq!(stream.take(2).await, logs(3..=4));
    append(&app.store, job, &["5\n"]).await;
    assert_eq!(stream.expect_event().await, log(5, "5\n"));
    app.store
        .finish_job(job, &JobOutcome::exited(0))
        .await
        .unwrap();
    expect_complete(&mut stream, true).await;
}

#[tokio::test]
async fn a_long_backlog_is_sent_in_order_without_gaps() {
    let app = spawn_app().await;
    let job = app.submit_async().await;
    app.store.mark_running(job, "c", "i", None).await.unwrap();
    let chunks: Vec<String> = (1..=1234).map(|i| format!("{i}\n")).collect();
    app.store.append_log(job, &chunks, None).await.unwrap();
    app.store
        .finish_job(job, &JobOutcome::exited(0))
        .await
        .unwrap();

    for (query, from) in [
        ("?from_beginning=true", 1),
        ("?after=499", 500),
        ("?after=1000", 1001),
    ] {
        let mut stream = app.stream(job, query, None).await;
        let events = stream.rest().await;
        let (last, rest) = events.split_last().unwrap();
        assert_eq!(rest, logs(from..=1234), "{query}");
        assert_complete(&last.event, true);
    }
}

#[tokio::test]
async fn a_failure_reason_is_the_last_log_event() {
    let app = spawn_app().await;
    let reason = "Job timed out after 5 seconds";

    // Live: the reason arrives before `complete`.
    let job = running_job_with_output(&app, 1).await;
    let mut live = app.stream(job, "?from_beginning=true", None).await;
    assert_eq!(live.expect_event().await, log(1, "1\n"));
    app.store
        .finish_job(job, &JobOutcome::failed(reason))
        .await
        .unwrap();
    assert_eq!(live.expect_event().await, log(2, &format!("{reason}\n")));
    expect_complete(&mut live, false).await;

    // Replayed.
    let mut replay = app.stream(job, "?from_beginning=true", None).await;
    assert_eq!(
        replay.take(2).await,
        vec![log(1, "1\n"), log(2, &format!("{reason}\n"))]
    );
    expect_complete(&mut replay, false).await;

    // A job that never ran: the reason is its only output.
    let job = app.submit_async().await;
    let mut live = app.stream(job, "", None).await;
    app.store
        .finish_job(
            job,
            &JobOutcome::failed("The uploaded archive could not be unpacked"),
        )
        .await
        .unwrap();
    assert_eq!(
        live.expect_event().await,
        log(1, "The uploaded archive could not be unpacked\n")
    );
    expect_complete(&mut live, false).await;
}

#[tokio::test]
async fn a_cancelled_job_completes_unsuccessfully() {
    let app = spawn_app().await;
    let job = running_job_with_output(&app, 1).await;
    let mut stream = app.stream(job, "", None).await;

    let response = app
        .post(&format!("/jobs/{job}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The controller sees the request and stops the job.
    assert!(
        app.store
            .get_job(job)
            .await
            .unwrap()
            .unwrap()
            .cancel_requested
    );
    app.store
        .finish_job(job, &JobOutcome::cancelled())
        .await
        .unwrap();
    let done = expect_complete(&mut stream, false).await;
    assert_eq!(
        done.event,
        StreamEvent::Complete {
            success: false,
            status: Some(JobStatus::Cancelled)
        }
    );

    // A queued job cancelled before it ran.
    let job = app.submit_async().await;
    let mut stream = app.stream(job, "?from_beginning=true", None).await;
    app.store
        .finish_job(job, &JobOutcome::cancelled())
        .await
        .unwrap();
    let done = expect_complete(&mut stream, false).await;
    assert_eq!(
        done.event,
        StreamEvent::Complete {
            success: false,
            status: Some(JobStatus::Cancelled)
        }
    );
}

#[tokio::test]
async fn a_failed_job_completes_with_the_completed_status() {
    let app = spawn_app().await;
    let job = running_job_with_output(&app, 1).await;
    app.store
        .finish_job(job, &JobOutcome::exited(1))
        .await
        .unwrap();
    let mut stream = app.stream(job, "?from_beginning=true", None).await;
    let events = stream.rest().await;
    assert_eq!(
        events.last().map(|e| &e.event),
        Some(&StreamEvent::Complete {
            success: false,
            status: Some(JobStatus::Completed)
        })
    );
}

#[tokio::test]
async fn another_users_stream_is_refused() {
    let app = spawn_app().await;
    let (_, other_key, _) = app.new_user().await;
    let theirs = app.submit_async_as(&other_key).await;
    for query in ["", "?from_beginning=true", "?after=0"] {
        let response = app
            .get(&format!("/jobs/{theirs}/stream{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(error_detail(response, 403).await, "Access denied");
    }
}

#[tokio::test]
async fn a_malformed_after_is_a_json_error() {
    let app = spawn_app().await;
    let job = app.submit_async().await;
    let response = app
        .get(&format!("/jobs/{job}/stream?after=abc"))
        .send()
        .await
        .unwrap();
    let detail = error_detail(response, 422).await;
    assert!(detail.contains("after"), "{detail}");
}

#[tokio::test]
async fn a_stream_begun_on_one_replica_continues_on_another() {
    let a = spawn_app().await;
    let b = a.spawn_replica().await;
    let job = running_job_with_output(&a, 2).await;

    let mut on_a = a.stream(job, "?from_beginning=true", None).await;
    assert_eq!(on_a.take(2).await, logs(1..=2));
    append(&a.store, job, &["3\n"]).await;
    let last = on_a.expect_event().await;
    assert_eq!(last, log(3, "3\n"));
    drop(on_a);

    // Output written while the client moves over.
    append(&a.store, job, &["4\n"]).await;
    let mut on_b = b.stream(job, "", last.id).await;
    assert_eq!(on_b.expect_event().await, log(4, "4\n"));

    // Written by another process: replica B learns of it from the database.
    append(&a.store, job, &["5\n"]).await;
    assert_eq!(on_b.expect_event().await, log(5, "5\n"));
    a.store
        .finish_job(job, &JobOutcome::exited(0))
        .await
        .unwrap();
    expect_complete(&mut on_b, true).await;
}

async fn post_upload(app: &TestApp, route: &str) -> SseStream {
    let response = within(
        "the upload's response headers",
        app.post(route)
            .multipart(zip_form(project_zip("test_s.py")))
            .send(),
    )
    .await
    .unwrap();
    SseStream::new(response)
}

#[tokio::test]
async fn submit_stream_names_the_job_then_streams_it() {
    let app = spawn_app().await;
    let mut stream = post_upload(&app, "/submit-stream").await;
    let first = stream.expect_event().await;
    let StreamEvent::JobId { job_id } = first.event else {
        panic!("first event names the job: {first:?}");
    };
    let job = app
        .store
        .get_job(job_id)
        .await
        .unwrap()
        .expect("job exists");
    assert_eq!(job.user_id, app.user.id);

    app.store
        .mark_running(job_id, "c", "i", None)
        .await
        .unwrap();
    append(&app.store, job_id, &["collected 1 item\n"]).await;
    assert_eq!(stream.expect_event().await, log(1, "collected 1 item\n"));
    append(
        &app.store,
        job_id,
        &["test_s.py::test_ok PASSED\n", "1 passed\n"],
    )
    .await;
    assert_eq!(
        stream.take(2).await,
        vec![log(2, "test_s.py::test_ok PASSED\n"), log(3, "1 passed\n")]
    );
    app.store
        .finish_job(job_id, &JobOutcome::exited(0))
        .await
        .unwrap();
    expect_complete(&mut stream, true).await;
}

#[tokio::test]
async fn submit_streams_the_job_without_naming_it() {
    let app = spawn_app().await;
    let mut stream = post_upload(&app, "/submit").await;
    // The job exists once the response has started.
    let jobs = app.store.list_jobs_for_user(app.user.id).await.unwrap();
    assert_eq!(jobs.len(), 1);
    let job = jobs[0].job_id;

    app.store.mark_running(job, "c", "i", None).await.unwrap();
    append(&app.store, job, &["1 failed\n"]).await;
    // The first event is the job's output, not a job_id event.
    assert_eq!(stream.expect_event().await, log(1, "1 failed\n"));
    app.store
        .finish_job(job, &JobOutcome::exited(1))
        .await
        .unwrap();
    expect_complete(&mut stream, false).await;
}

#[tokio::test]
async fn a_quiet_stream_sends_keep_alive_comments() {
    let app = spawn_app_with(ServerConfig {
        keep_alive: Duration::from_millis(20),
        ..test_config()
    })
    .await;
    let job = running_job_with_output(&app, 1).await;
    let mut stream = app.stream(job, "", None).await;
    let mut comments = 0;
    while comments < 2 {
        match stream.next_item().await {
            Some(SseItem::Comment) => comments += 1,
            other => panic!("only keep-alives while the job is quiet: {other:?}"),
        }
    }
    append(&app.store, job, &["2\n"]).await;
    assert_eq!(stream.expect_event().await, log(2, "2\n"));
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_serve_returns() {
    let mut app = spawn_app().await;
    let job = running_job_with_output(&app, 1).await;
    let mut stream = app.stream(job, "?from_beginning=true", None).await;
    assert_eq!(stream.expect_event().await, log(1, "1\n"));
    let mut second = app.stream(job, "", None).await;

    app.trigger_shutdown();
    // The streams end cleanly, without a `complete`: the job has not ended,
    // and the client is to reconnect elsewhere.
    stream.expect_end().await;
    second.expect_end().await;
    app.server_stopped().await.expect("serve returns Ok");

    // Nothing listens any more.
    let refused = app.client.get(app.url("/health")).send().await;
    assert!(refused.is_err(), "{refused:?}");
    // The job itself is untouched.
    let job = app.store.get_job(job).await.unwrap().unwrap();
    assert_eq!(job.status, ci_common::JobStatus::Running);
}

/// A `GET /jobs/{id}/stream?from_beginning=true` on a socket with a small
/// receive buffer, whose response is then not read.
async fn stalled_stream(app: &TestApp, job: JobId) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut stream = within("a connection", socket.connect(app.addr))
        .await
        .unwrap();
    let request = format!(
        "GET /jobs/{job}/stream?from_beginning=true HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        app.addr, app.key
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_whose_clients_do_not_read_stop_reading_the_log() {
    use tokio::io::AsyncReadExt;
    let app = spawn_app().await;
    let job = app.submit_async().await;
    app.store.mark_running(job, "c", "i", None).await.unwrap();
    // 48 MiB of output in chunks of 64 KiB, as the controller stores a
    // fast-printing job's.
    let chunk = format!("{}\n", "x".repeat(64 * 1024 - 1));
    let chunks_total = 768;
    for _ in 0..chunks_total / 64 {
        app.store
            .append_log(job, &vec![chunk.clone(); 64], None)
            .await
            .unwrap();
    }
    app.store
        .finish_job(job, &JobOutcome::exited(0))
        .await
        .unwrap();
    let log_bytes = (chunk.len() * chunks_total) as u64;

    let streams = 8u64;
    let mut stalled = Vec::new();
    for _ in 0..streams {
        stalled.push(stalled_stream(&app, job).await);
    }
    // Every stream has begun reading the log…
    within("every stream's first page", async {
        while app.stream_reads.pages() < streams {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // …and, with nobody reading, each stops after what fills the socket's
    // buffers (a few MiB in the kernel, a few hundred KiB in hyper) and one
    // page more (1 MiB): well under its 48 MiB. Reading the log ahead of the
    // client (one page of 500 chunks was 32 MiB) would pass the bound at once.
    let bound = streams * 16 * 1024 * 1024;
    let watched_until = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < watched_until {
        let read = app.stream_reads.bytes();
        assert!(
            read <= bound,
            "{streams} streams nobody reads read {read} bytes of a {log_bytes}-byte log (bound {bound})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A client that reads on gets the whole log, in order, and the end.
    let mut reader = stalled.pop().unwrap();
    let mut body = Vec::new();
    within("the whole log", reader.read_to_end(&mut body))
        .await
        .unwrap();
    let text = String::from_utf8(body).unwrap();
    let ids: Vec<i64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
        .map(|id| id.trim().parse().unwrap())
        .collect();
    let mut expected: Vec<i64> = (1..=chunks_total as i64).collect();
    expected.push(chunks_total as i64);
    assert_eq!(ids, expected, "every chunk once, in order, then complete");
    assert!(text.contains(r#""type":"complete""#));
}
