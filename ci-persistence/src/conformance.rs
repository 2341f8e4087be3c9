//! The behaviour every backend must show, written against [`Store`]'s public
//! interface only. Each backend's test file runs all of it through
//! [`conformance_suite!`](crate::conformance_suite) with its own way of making
//! a fresh, empty store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use ci_common::api::JobSummary;
use ci_common::{
    generate_api_key, ApiKeyId, CursorMove, JobId, JobOptions, JobStatus, LogCursor, UserId,
};
use uuid::Uuid;

use ci_common::test_results::{JobReport, TestCase, TestOutcome, TestTotals};

use crate::{
    Channel, JobOutcome, NewJob, OwnedJobSummary, ReapStep, Reaped, ReportChunk, SessionLookup,
    Store, StoreError, ARCHIVE_GRACE,
};

/// Runs every conformance test as its own `#[tokio::test]`. `$make` is an
/// expression of type `impl Fn() -> impl Future<Output = (Store, Store, S)>`,
/// giving two handles on one fresh database opened independently, as two
/// processes would, and whatever must outlive them and go after the test
/// (`S`: the SQLite file's folder, the PostgreSQL test database).
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@tests $make;
            users_are_created_found_and_unique,
            users_can_be_deactivated_and_activated,
            api_keys_authenticate_until_revoked,
            a_key_and_a_job_are_read_together,
            sessions_stand_for_their_key_until_it_stops,
            a_session_ends_for_good_with_its_owner,
            archives_are_content_addressed,
            large_archives_are_stored_in_chunks,
            an_archive_stored_twice_is_kept_once,
            a_missing_archive_is_none,
            an_archive_whose_digest_lies_is_not_stored,
            jobs_follow_their_life_cycle,
            job_options_and_the_python_run_are_kept,
            illegal_transitions_are_refused,
            failure_reason_is_the_last_output,
            cancellation_is_recorded_once,
            transactions_that_read_first_wait_for_another_processs_writes,
            output_is_read_after_a_sequence_number,
            a_follower_that_was_overtaken_stores_nothing,
            output_of_an_ended_job_is_refused,
            stored_output_is_counted_in_bytes,
            concurrent_appenders_lose_nothing,
            concurrent_job_creation_from_two_processes,
            lease_has_one_holder_at_a_time,
            changes_wake_other_processes,
            a_job_watch_wakes_for_its_own_job_only,
            a_job_watch_wakes_when_its_job_ends,
            log_pages_are_bounded_in_rows_and_bytes,
            test_reports_are_stored_once_with_their_totals,
            a_job_without_a_report_says_why,
            flaky_tests_disagree_on_the_same_code_of_the_same_owner,
            reports_stored_as_parsed_commit_only_when_whole,
            ended_jobs_past_retention_go_with_their_output_and_results,
            queued_and_running_jobs_stay_whatever_their_age,
            archives_go_once_no_job_refers_to_them,
            an_archive_uploaded_again_is_not_reaped_before_its_job,
            sessions_of_revoked_keys_and_deactivated_users_go,
            freed_pages_are_given_back_where_the_file_keeps_them,
            new_failures_did_not_fail_in_the_projects_previous_job,
            a_projects_tests_have_a_bounded_history,
            a_queued_jobs_place_counts_everyones_earlier_queued_jobs,
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let make = $make;
                // `_scratch` (the database's folder, or its server-side
                // database) outlives both stores and goes after the test.
                let (a, b, _scratch) = make().await;
                $crate::conformance::$name(a, b).await;
            }
        )*
    };
}

async fn user(store: &Store) -> UserId {
    let email = format!("{}@example.com", Uuid::new_v4().simple());
    store.create_user("Test User", &email).await.unwrap().id
}

async fn job(store: &Store, user_id: UserId) -> JobId {
    let digest = store
        .put_archive(b"PK\x05\x06 not really a zip")
        .await
        .unwrap();
    store
        .create_job(&NewJob::new(user_id, digest))
        .await
        .unwrap()
        .id
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

pub async fn job_options_and_the_python_run_are_kept(s: Store, other: Store) {
    let user_id = user(&s).await;
    let digest = s.put_archive(b"PK\x05\x06 options").await.unwrap();
    let options = JobOptions {
        python: Some("3.13".parse().unwrap()),
        project: Some("démo-project".into()),
        fresh_env: true,
        pytest_args: vec!["-k".into(), "not slow and 'quoted'".into(), "-x".into()],
    };
    let id = JobId::random();
    let created = s
        .create_job(&NewJob {
            id,
            user_id,
            archive_digest: digest.clone(),
            options: options.clone(),
            request_id: Some("req-1234".into()),
        })
        .await
        .unwrap();
    assert_eq!(
        (created.options.clone(), created.python),
        (options.clone(), None)
    );
    // Read back by another process, and through the controller's listing.
    let read = other.get_job(id).await.unwrap().unwrap();
    assert_eq!(read.options, options);
    assert_eq!(read.request_id.as_deref(), Some("req-1234"));
    let unfinished = other.list_unfinished_jobs().await.unwrap();
    assert_eq!(unfinished[0].options, options);
    assert_eq!(unfinished[0].request_id.as_deref(), Some("req-1234"));
    let running = other
        .mark_running(id, "c", "img", Some("3.13".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(
        running.python.map(|p| p.to_string()).as_deref(),
        Some("3.13")
    );
    // The reference client's jobs ask for nothing.
    let plain = job(&s, user_id).await;
    let plain = s.get_job(plain).await.unwrap().unwrap();
    assert_eq!((plain.options, plain.python), (JobOptions::default(), None));
}

pub async fn users_are_created_found_and_unique(s: Store, _: Store) {
    let u = s.create_user("Ada", "ada@example.com").await.unwrap();
    assert!(u.is_active);
    assert_eq!(s.get_user(u.id).await.unwrap().unwrap(), u);
    assert_eq!(
        s.get_user_by_email("ada@example.com")
            .await
            .unwrap()
            .unwrap(),
        u
    );
    assert!(s.get_user(UserId::random()).await.unwrap().is_none());
    let dup = s.create_user("Other", "ada@example.com").await;
    assert!(matches!(dup, Err(StoreError::AlreadyExists(_))), "{dup:?}");
    let v = s.create_user("Bob", "bob@example.com").await.unwrap();
    let all: Vec<UserId> = s.list_users().await.unwrap().iter().map(|u| u.id).collect();
    assert_eq!(all, vec![u.id, v.id]);
}

pub async fn users_can_be_deactivated_and_activated(s: Store, _: Store) {
    let id = user(&s).await;
    assert!(!s.set_user_active(id, false).await.unwrap().is_active);
    assert!(!s.get_user(id).await.unwrap().unwrap().is_active);
    assert!(s.set_user_active(id, true).await.unwrap().is_active);
    assert!(matches!(
        s.set_user_active(UserId::random(), false).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn api_keys_authenticate_until_revoked(s: Store, other: Store) {
    let uid = user(&s).await;
    let key = generate_api_key().unwrap();
    let rec = s.create_api_key(uid, "laptop", &key).await.unwrap();
    assert_eq!(rec.key_prefix, &key.secret[..8]);
    assert!(rec.last_used_at.is_none());
    assert_eq!(s.authenticate(&key.hash).await.unwrap().unwrap().id, uid);
    // The other handle (another replica) sees the same, and last use is recorded.
    assert_eq!(
        other.authenticate(&key.hash).await.unwrap().unwrap().id,
        uid
    );
    assert!(s
        .get_api_key(rec.id)
        .await
        .unwrap()
        .unwrap()
        .last_used_at
        .is_some());
    assert!(s
        .authenticate(&ci_common::hash_api_key("ci_unknown"))
        .await
        .unwrap()
        .is_none());

    let uid2 = user(&s).await;
    let key2 = generate_api_key().unwrap();
    s.create_api_key(uid2, "ci", &key2).await.unwrap();
    assert_eq!(s.list_api_keys(Some(uid)).await.unwrap().len(), 1);
    assert_eq!(s.list_api_keys(None).await.unwrap().len(), 2);
    assert!(matches!(
        s.create_api_key(UserId::random(), "x", &key2).await,
        Err(StoreError::NotFound(_))
    ));

    // Deactivating the owner stops the key on every handle; activating restores it.
    s.set_user_active(uid, false).await.unwrap();
    assert!(other.authenticate(&key.hash).await.unwrap().is_none());
    s.set_user_active(uid, true).await.unwrap();
    assert!(other.authenticate(&key.hash).await.unwrap().is_some());

    let revoked = s.revoke_api_key(rec.id).await.unwrap();
    assert!(!revoked.is_active);
    assert!(other.authenticate(&key.hash).await.unwrap().is_none());
    assert!(matches!(
        s.revoke_api_key(ApiKeyId::random()).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn sessions_stand_for_their_key_until_it_stops(s: Store, other: Store) {
    let uid = user(&s).await;
    let key = generate_api_key().unwrap();
    let rec = s.create_api_key(uid, "browser", &key).await.unwrap();
    let active = SessionLookup::Active {
        key_hash: key.hash.clone(),
    };

    assert!(s.create_session("session-a", &key.hash).await.unwrap());
    assert!(s.create_session("session-b", &key.hash).await.unwrap());
    // Another replica sees both.
    assert_eq!(other.look_up_session("session-a").await.unwrap(), active);
    assert_eq!(other.look_up_session("session-b").await.unwrap(), active);
    assert_eq!(
        s.look_up_session("never-made").await.unwrap(),
        SessionLookup::Unknown
    );
    // No session for a key that does not exist; the same id cannot be taken twice.
    assert!(!s
        .create_session("session-c", &ci_common::hash_api_key("ci_unknown"))
        .await
        .unwrap());
    assert_eq!(
        s.look_up_session("session-c").await.unwrap(),
        SessionLookup::Unknown
    );
    assert!(s.create_session("session-a", &key.hash).await.is_err());

    // Signing out ends one session, not the other.
    assert!(other.delete_session("session-a").await.unwrap());
    assert!(!other.delete_session("session-a").await.unwrap());
    assert_eq!(
        s.look_up_session("session-a").await.unwrap(),
        SessionLookup::Unknown
    );
    assert_eq!(s.look_up_session("session-b").await.unwrap(), active);

    // Revoking the key ends its sessions on the next look-up, on any replica,
    // and a revoked key cannot make new ones.
    s.revoke_api_key(rec.id).await.unwrap();
    assert_eq!(
        other.look_up_session("session-b").await.unwrap(),
        SessionLookup::Ended
    );
    assert_eq!(
        s.look_up_session("session-b").await.unwrap(),
        SessionLookup::Unknown
    );
    assert!(!s.create_session("session-d", &key.hash).await.unwrap());
}

pub async fn a_session_ends_for_good_with_its_owner(s: Store, other: Store) {
    let uid = user(&s).await;
    let key = generate_api_key().unwrap();
    s.create_api_key(uid, "browser", &key).await.unwrap();
    assert!(s.create_session("session", &key.hash).await.unwrap());

    s.set_user_active(uid, false).await.unwrap();
    assert!(!s.create_session("later", &key.hash).await.unwrap());
    assert_eq!(
        other.look_up_session("session").await.unwrap(),
        SessionLookup::Ended
    );
    // Reactivating the user revives the key, not the session that was ended.
    s.set_user_active(uid, true).await.unwrap();
    assert_eq!(
        other.look_up_session("session").await.unwrap(),
        SessionLookup::Unknown
    );
    assert!(s.create_session("later", &key.hash).await.unwrap());
}

pub async fn a_key_and_a_job_are_read_together(s: Store, other: Store) {
    let owner = user(&s).await;
    let key = generate_api_key().unwrap();
    let rec = s.create_api_key(owner, "laptop", &key).await.unwrap();
    let mine = job(&s, owner).await;
    let someone = user(&s).await;
    let theirs = job(&s, someone).await;

    let (u, j) = other
        .authenticate_with_job(&key.hash, mine)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u.id, owner);
    assert_eq!(j, other.get_job(mine).await.unwrap());
    // Another user's job comes back too: whose it is, is the caller's check.
    let (_, j) = other
        .authenticate_with_job(&key.hash, theirs)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(j.unwrap().user_id, someone);
    let (_, j) = other
        .authenticate_with_job(&key.hash, JobId::random())
        .await
        .unwrap()
        .unwrap();
    assert!(j.is_none());

    // The summary variant (GET /jobs/{id}) answers the same, narrowed.
    let summary_of = |id| {
        let other = other.clone();
        let hash = key.hash.clone();
        async move {
            other
                .authenticate_with_job_summary(&hash, id)
                .await
                .unwrap()
        }
    };
    let full = other.get_job(mine).await.unwrap().unwrap();
    assert_eq!(
        summary_of(mine).await,
        Some((
            owner,
            Some(OwnedJobSummary {
                owner,
                summary: JobSummary::from(&full)
            })
        ))
    );
    let (_, j) = summary_of(theirs).await.unwrap();
    assert_eq!(j.unwrap().owner, someone);
    assert_eq!(summary_of(JobId::random()).await, Some((owner, None)));
    assert!(s
        .get_api_key(rec.id)
        .await
        .unwrap()
        .unwrap()
        .last_used_at
        .is_some());

    // Refused keys get nothing, job or not.
    let unknown = ci_common::hash_api_key("ci_unknown");
    assert!(other
        .authenticate_with_job(&unknown, mine)
        .await
        .unwrap()
        .is_none());
    assert!(other
        .authenticate_with_job_summary(&unknown, mine)
        .await
        .unwrap()
        .is_none());
    s.set_user_active(owner, false).await.unwrap();
    assert!(other
        .authenticate_with_job(&key.hash, mine)
        .await
        .unwrap()
        .is_none());
    assert!(summary_of(mine).await.is_none());
    s.set_user_active(owner, true).await.unwrap();
    s.revoke_api_key(rec.id).await.unwrap();
    assert!(other
        .authenticate_with_job(&key.hash, mine)
        .await
        .unwrap()
        .is_none());
    assert!(summary_of(mine).await.is_none());
}

pub async fn archives_are_content_addressed(s: Store, other: Store) {
    let a = s.put_archive(b"one").await.unwrap();
    let again = other.put_archive(b"one").await.unwrap();
    let b = s.put_archive(b"two").await.unwrap();
    assert_eq!(a, again);
    assert_ne!(a, b);
    assert_eq!(a.len(), 64);
    assert_eq!(other.get_archive(&a).await.unwrap().unwrap(), b"one");
    assert!(s.get_archive("0000").await.unwrap().is_none());
}

/// Bytes that differ chunk to chunk, so a chunk out of order shows.
fn patterned(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
        .collect()
}

pub async fn large_archives_are_stored_in_chunks(s: Store, other: Store) {
    // Two whole chunks and a part, written from a reader.
    let bytes = patterned(2 * crate::ARCHIVE_CHUNK_BYTES + 12_345);
    let digest = crate::archive_digest(&bytes);
    s.put_archive_from(&digest, bytes.as_slice()).await.unwrap();
    assert_eq!(other.get_archive(&digest).await.unwrap().unwrap(), bytes);
    let mut copied = Vec::new();
    let size = other.copy_archive_to(&digest, &mut copied).await.unwrap();
    assert_eq!(size, Some(bytes.len() as u64));
    assert!(copied == bytes, "the copy differs from what was stored");
    // Exactly one chunk, and nothing at all, round-trip too.
    for len in [crate::ARCHIVE_CHUNK_BYTES, 0] {
        let bytes = patterned(len);
        let digest = s.put_archive(&bytes).await.unwrap();
        assert_eq!(other.get_archive(&digest).await.unwrap().unwrap(), bytes);
    }
}

/// A reader that must not be read: the archive is stored already.
struct Unread;

impl tokio::io::AsyncRead for Unread {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        panic!("an archive stored already was read again");
    }
}

pub async fn an_archive_stored_twice_is_kept_once(s: Store, other: Store) {
    let bytes = patterned(crate::ARCHIVE_CHUNK_BYTES + 1);
    let digest = crate::archive_digest(&bytes);
    // Two processes storing the same upload at once: both succeed, one copy.
    let (a, b) = tokio::join!(
        s.put_archive_from(&digest, bytes.as_slice()),
        other.put_archive_from(&digest, bytes.as_slice())
    );
    a.unwrap();
    b.unwrap();
    s.put_archive_from(&digest, Unread).await.unwrap();
    assert_eq!(s.put_archive(&bytes).await.unwrap(), digest);
    assert_eq!(other.get_archive(&digest).await.unwrap().unwrap(), bytes);
}

pub async fn a_missing_archive_is_none(s: Store, _other: Store) {
    let digest = crate::archive_digest(b"never stored");
    assert!(s.get_archive(&digest).await.unwrap().is_none());
    let mut out = Vec::new();
    assert_eq!(s.copy_archive_to(&digest, &mut out).await.unwrap(), None);
    assert!(out.is_empty());
}

pub async fn an_archive_whose_digest_lies_is_not_stored(s: Store, other: Store) {
    let digest = crate::archive_digest(b"what was announced");
    let err = s
        .put_archive_from(&digest, &b"what arrived"[..])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert!(other.get_archive(&digest).await.unwrap().is_none());
    // The real content can still be stored under its digest.
    s.put_archive_from(&digest, &b"what was announced"[..])
        .await
        .unwrap();
    assert_eq!(
        other.get_archive(&digest).await.unwrap().unwrap(),
        b"what was announced"
    );
}

pub async fn stored_output_is_counted_in_bytes(s: Store, other: Store) {
    let uid = user(&s).await;
    let id = job(&s, uid).await;
    assert_eq!(other.stored_log_bytes(id).await.unwrap(), 0);
    // "é" is two bytes in UTF-8: bytes are counted, not characters.
    s.append_log(id, &["héllo\n".to_string(), "wörld\n".to_string()], None)
        .await
        .unwrap();
    s.append_log(
        id,
        &["!".to_string()],
        Some(&moved(None, "2026-01-01T00:00:00Z")),
    )
    .await
    .unwrap();
    assert_eq!(other.stored_log_bytes(id).await.unwrap(), 7 + 7 + 1);
    let another = job(&s, uid).await;
    assert_eq!(other.stored_log_bytes(another).await.unwrap(), 0);
}

pub async fn jobs_follow_their_life_cycle(s: Store, other: Store) {
    let uid = user(&s).await;
    let first = job(&s, uid).await;
    let second = job(&s, uid).await;
    let stranger = job(&s, user(&s).await).await;

    let j = other.get_job(first).await.unwrap().unwrap();
    assert_eq!(
        (j.status, j.success, j.last_seq),
        (JobStatus::Queued, None, 0)
    );
    let mine: Vec<JobId> = s
        .list_jobs_for_user(uid)
        .await
        .unwrap()
        .iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(
        mine,
        vec![second, first],
        "newest first, only the user's own"
    );
    let unfinished: Vec<JobId> = s
        .list_unfinished_jobs()
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(unfinished, vec![first, second, stranger], "oldest first");

    let running = s
        .mark_running(first, "c0ffee", "img:1", None)
        .await
        .unwrap();
    assert_eq!(running.status, JobStatus::Running);
    assert_eq!(running.container_id.as_deref(), Some("c0ffee"));
    assert!(running.started_at.is_some());

    let done = s.finish_job(first, &JobOutcome::exited(1)).await.unwrap();
    assert_eq!(
        (done.status, done.success, done.exit_code),
        (JobStatus::Completed, Some(false), Some(1))
    );
    assert!(done.ended_at.is_some());
    let ok = s.finish_job(second, &JobOutcome::exited(0)).await.unwrap();
    assert_eq!(ok.success, Some(true), "a queued job may complete directly");
    let unfinished: Vec<JobId> = s
        .list_unfinished_jobs()
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(unfinished, vec![stranger]);
}

pub async fn illegal_transitions_are_refused(s: Store, _: Store) {
    let id = job(&s, user(&s).await).await;
    s.finish_job(id, &JobOutcome::cancelled()).await.unwrap();
    for result in [
        s.mark_running(id, "c", "i", None).await,
        s.finish_job(id, &JobOutcome::exited(0)).await,
        s.finish_job(id, &JobOutcome::cancelled()).await,
    ] {
        assert!(
            matches!(result, Err(StoreError::IllegalTransition(t)) if t.from == JobStatus::Cancelled),
            "{result:?}"
        );
    }
    let missing = s.mark_running(JobId::random(), "c", "i", None).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

pub async fn failure_reason_is_the_last_output(s: Store, _: Store) {
    let id = job(&s, user(&s).await).await;
    s.append_log(id, &["collecting\n".into()], None)
        .await
        .unwrap();
    let done = s
        .finish_job(id, &JobOutcome::failed("Job timed out after 5 seconds"))
        .await
        .unwrap();
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("Job timed out after 5 seconds")
    );
    assert_eq!(done.success, Some(false));
    let log = s.read_log(id, 0, 100).await.unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].text, "Job timed out after 5 seconds\n");
    assert_eq!(done.last_seq, 2);

    // Output that stopped mid-line: the reason still starts a line.
    let cut = job(&s, user(&s).await).await;
    s.append_log(cut, &["test_hog.py::test_hog ".into()], None)
        .await
        .unwrap();
    s.finish_job(cut, &JobOutcome::failed("The job was killed"))
        .await
        .unwrap();
    let log = s.read_log(cut, 0, 100).await.unwrap();
    let text: String = log.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(text, "test_hog.py::test_hog \nThe job was killed\n");

    // No output at all: no empty line before the reason.
    let silent = job(&s, user(&s).await).await;
    s.finish_job(silent, &JobOutcome::failed("No image"))
        .await
        .unwrap();
    let log = s.read_log(silent, 0, 100).await.unwrap();
    assert_eq!(log[0].text, "No image\n");
}

pub async fn cancellation_is_recorded_once(s: Store, _: Store) {
    let id = job(&s, user(&s).await).await;
    assert!(s.request_cancel(id).await.unwrap().cancel_requested);
    assert!(s.request_cancel(id).await.unwrap().cancel_requested);
    let ended = s.finish_job(id, &JobOutcome::cancelled()).await.unwrap();
    assert_eq!((ended.status, ended.success), (JobStatus::Cancelled, None));
    assert_eq!(
        s.request_cancel(id).await.unwrap().status,
        JobStatus::Cancelled
    );
    assert!(matches!(
        s.request_cancel(JobId::random()).await,
        Err(StoreError::NotFound(_))
    ));
}

/// Writes that read before they write (a cancellation looks up the cancel
/// reason first) while another process writes all the time: each waits its
/// turn. On SQLite a transaction that began as a reader and then writes after
/// another connection committed fails at once with "database is locked"
/// (its snapshot is stale, and no busy timeout waits that out), unless it
/// takes the write lock when it begins.
pub async fn transactions_that_read_first_wait_for_another_processs_writes(s: Store, other: Store) {
    let owner = user(&s).await;
    let busy = job(&other, owner).await;
    other.mark_running(busy, "c", "i", None).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut writes = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                other
                    .append_log(busy, &["tick\n".into()], None)
                    .await
                    .unwrap();
                writes += 1;
            }
            writes
        }
    });
    for _ in 0..60 {
        let id = job(&s, owner).await;
        s.request_cancel(id).await.unwrap();
        let ended = within("a cancellation", s.finish_job(id, &JobOutcome::cancelled())).await;
        assert_eq!(ended.unwrap().status, JobStatus::Cancelled);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.await.unwrap() > 0, "the other process never wrote");
}

fn moved(from: Option<&str>, to: &str) -> CursorMove {
    CursorMove {
        from: from.map(LogCursor::new),
        to: LogCursor::new(to),
    }
}

/// Two followers of one job resumed from the same cursor (a controller that
/// was thought gone still had a write in flight): the first write wins, the
/// second is refused and stores nothing, and says where the output ends now.
pub async fn a_follower_that_was_overtaken_stores_nothing(s: Store, other: Store) {
    let id = job(&s, user(&s).await).await;
    s.append_log(id, &["a\n".into()], Some(&moved(None, "t1")))
        .await
        .unwrap();
    s.append_log(id, &["b\n".into()], Some(&moved(Some("t1"), "t2")))
        .await
        .unwrap();
    // The stale follower also read on from t1.
    let refused = other
        .append_log(id, &["b\n".into()], Some(&moved(Some("t1"), "t2")))
        .await;
    match refused {
        Err(StoreError::CursorMoved { job, stored }) => {
            assert_eq!(job, id);
            assert_eq!(stored, Some(LogCursor::new("t2")));
        }
        other => panic!("expected CursorMoved, got {other:?}"),
    }
    // A follower that never saw a cursor is refused once there is one.
    assert!(matches!(
        other
            .append_log(id, &["a\n".into()], Some(&moved(None, "t1")))
            .await,
        Err(StoreError::CursorMoved { .. })
    ));
    // The controller's own lines are not output of the container's log.
    assert_eq!(
        s.append_log(id, &["[ci] note\n".into()], None)
            .await
            .unwrap(),
        3
    );
    let texts: Vec<String> = other
        .read_log(id, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.text)
        .collect();
    assert_eq!(texts, ["a\n", "b\n", "[ci] note\n"]);
    let j = other.get_job(id).await.unwrap().unwrap();
    assert_eq!((j.last_seq, j.log_cursor), (3, Some(LogCursor::new("t2"))));
    // An ended job refuses every write as before.
    s.finish_job(id, &JobOutcome::exited(0)).await.unwrap();
    assert!(matches!(
        s.append_log(id, &["late\n".into()], Some(&moved(Some("t2"), "t3")))
            .await,
        Err(StoreError::IllegalTransition(_))
    ));
}

pub async fn output_is_read_after_a_sequence_number(s: Store, other: Store) {
    let id = job(&s, user(&s).await).await;
    let last = s
        .append_log(id, &["a\n".into(), "b\n".into()], Some(&moved(None, "t1")))
        .await
        .unwrap();
    assert_eq!(last, 2);
    let last = s
        .append_log(id, &["c\n".into()], Some(&moved(Some("t1"), "t2")))
        .await
        .unwrap();
    assert_eq!(last, 3);
    assert_eq!(s.append_log(id, &[], None).await.unwrap(), 3);
    let all = other.read_log(id, 0, 100).await.unwrap();
    let texts: Vec<&str> = all.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts, ["a\n", "b\n", "c\n"]);
    assert_eq!(all.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(other.read_log(id, 2, 100).await.unwrap()[0].text, "c\n");
    assert!(other.read_log(id, 3, 100).await.unwrap().is_empty());
    assert_eq!(other.read_log(id, 0, 2).await.unwrap().len(), 2);
    let j = other.get_job(id).await.unwrap().unwrap();
    assert_eq!(
        (j.last_seq, j.log_cursor.as_ref().map(LogCursor::as_str)),
        (3, Some("t2"))
    );
    // A batch larger than one INSERT statement holds.
    let many: Vec<String> = (0..1234).map(|i| format!("line {i}\n")).collect();
    assert_eq!(s.append_log(id, &many, None).await.unwrap(), 3 + 1234);
    let back = other.read_log(id, 3, 10_000).await.unwrap();
    assert_eq!(
        back.iter().map(|c| c.text.clone()).collect::<Vec<_>>(),
        many
    );
}

pub async fn output_of_an_ended_job_is_refused(s: Store, _: Store) {
    let id = job(&s, user(&s).await).await;
    s.finish_job(id, &JobOutcome::exited(0)).await.unwrap();
    let late = s.append_log(id, &["late\n".into()], None).await;
    assert!(
        matches!(late, Err(StoreError::IllegalTransition(_))),
        "{late:?}"
    );
    assert!(s.read_log(id, 0, 10).await.unwrap().is_empty());
    assert!(matches!(
        s.append_log(JobId::random(), &["x".into()], None).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn concurrent_appenders_lose_nothing(s: Store, other: Store) {
    let id = job(&s, user(&s).await).await;
    let writers = 8;
    let batches = 25;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = if w % 2 == 0 { s.clone() } else { other.clone() };
        tasks.push(tokio::spawn(async move {
            for b in 0..batches {
                let chunk = vec![format!("w{w} b{b} x\n"), format!("w{w} b{b} y\n")];
                store.append_log(id, &chunk, None).await.expect("append");
            }
        }));
    }
    for t in tasks {
        within("appenders", t).await.unwrap();
    }
    let log = s.read_log(id, 0, 100_000).await.unwrap();
    let expected = writers * batches * 2;
    assert_eq!(log.len(), expected);
    let seqs: Vec<i64> = log.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, (1..=expected as i64).collect::<Vec<_>>());
    // Each batch stays contiguous and in order.
    for pair in log.chunks(2) {
        assert!(pair[0].text.ends_with("x\n") && pair[1].text.ends_with("y\n"));
        assert_eq!(
            pair[0].text.trim_end_matches("x\n"),
            pair[1].text.trim_end_matches("y\n")
        );
    }
    let distinct: BTreeSet<&str> = log.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(distinct.len(), expected);
}

pub async fn concurrent_job_creation_from_two_processes(s: Store, other: Store) {
    let uid = user(&s).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let store = if i % 2 == 0 { s.clone() } else { other.clone() };
        tasks.push(tokio::spawn(async move {
            let digest = store
                .put_archive(format!("archive {}", i % 7).as_bytes())
                .await?;
            store.create_job(&NewJob::new(uid, digest)).await
        }));
    }
    for t in tasks {
        within("job creation", t)
            .await
            .unwrap()
            .expect("no job creation may fail");
    }
    assert_eq!(s.list_jobs_for_user(uid).await.unwrap().len(), 100);
}

pub async fn lease_has_one_holder_at_a_time(s: Store, other: Store) {
    let ttl = Duration::from_millis(400);
    assert!(s.try_acquire_lease("controller", "a", ttl).await.unwrap());
    assert!(!other
        .try_acquire_lease("controller", "b", ttl)
        .await
        .unwrap());
    assert!(
        s.try_acquire_lease("controller", "a", ttl).await.unwrap(),
        "the holder renews"
    );
    assert_eq!(
        other.lease_holder("controller").await.unwrap().as_deref(),
        Some("a")
    );
    // b takes over once a stops renewing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !other
        .try_acquire_lease("controller", "b", ttl)
        .await
        .unwrap()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!s.try_acquire_lease("controller", "a", ttl).await.unwrap());
    other.release_lease("controller", "b").await.unwrap();
    assert!(
        s.try_acquire_lease("controller", "a", ttl).await.unwrap(),
        "released at once"
    );
}

pub async fn changes_wake_other_processes(s: Store, other: Store) {
    let uid = user(&s).await;
    let mut jobs_here = s.changes().subscribe(Channel::Jobs);
    let mut jobs_there = other.changes().subscribe(Channel::Jobs);
    jobs_here.borrow_and_update();
    jobs_there.borrow_and_update();
    let id = job(&s, uid).await;
    within("a local wake-up", jobs_here.changed())
        .await
        .unwrap();
    within("a wake-up from another process", jobs_there.changed())
        .await
        .unwrap();
    // The controller also wakes when a job is cancelled, started or ended
    // by another process.
    for step in ["cancel", "start", "end"] {
        jobs_there.borrow_and_update();
        match step {
            "cancel" => drop(s.request_cancel(id).await.unwrap()),
            "start" => drop(s.mark_running(id, "c", "i", None).await.unwrap()),
            _ => drop(s.finish_job(id, &JobOutcome::cancelled()).await.unwrap()),
        }
        within(
            &format!("a jobs wake-up from another process ({step})"),
            jobs_there.changed(),
        )
        .await
        .unwrap();
    }
}

/// Waits until `watch` wakes, failing the test after a while.
async fn woken(what: &str, watch: &mut crate::JobWatch) {
    within(what, watch.changed()).await;
    watch.mark_seen();
}

pub async fn a_job_watch_wakes_for_its_own_job_only(s: Store, other: Store) {
    let uid = user(&s).await;
    let (a, b) = (job(&s, uid).await, job(&s, uid).await);
    // The other process has taken in the starts before its watches are made:
    // a start's notification arriving late would wake b's watch one round
    // behind its output (PostgreSQL delivers notifications in order, so once
    // b's start is in, a's is too).
    let mut started = other.changes().subscribe_job(b);
    started.mark_seen();
    for id in [a, b] {
        s.mark_running(id, "c", "i", None).await.unwrap();
    }
    woken("b's start there", &mut started).await;
    drop(started);
    // Watches in the writer's process and in another one.
    let mut a_here = s.changes().subscribe_job(a);
    let mut a_there = other.changes().subscribe_job(a);
    let mut b_there = other.changes().subscribe_job(b);
    for w in [&mut a_here, &mut a_there, &mut b_there] {
        w.mark_seen();
    }
    // First output of each job: every watch has seen its job once.
    s.append_log(a, &["a1\n".into()], None).await.unwrap();
    s.append_log(b, &["b1\n".into()], None).await.unwrap();
    woken("a's first output here", &mut a_here).await;
    woken("a's first output there", &mut a_there).await;
    woken("b's first output there", &mut b_there).await;

    // Only b prints. Once b's watch in the other process has woken, that
    // process has taken in b's change; a's watches stayed asleep. (A watcher
    // that polls may wake a watch once when it first looks at its job, as the
    // job may have moved just before: at most one wake is allowed for that,
    // where waking for b's output would wake a's watches every round.)
    let rounds = 6;
    let (mut a_here_woke, mut a_there_woke) = (0, 0);
    for _ in 0..rounds {
        s.append_log(b, &["b\n".into()], None).await.unwrap();
        woken("b's output there", &mut b_there).await;
        for (w, count) in [
            (&mut a_here, &mut a_here_woke),
            (&mut a_there, &mut a_there_woke),
        ] {
            if w.has_changed() {
                *count += 1;
                w.mark_seen();
            }
        }
    }
    assert!(
        a_there_woke <= 1,
        "a watch of job a in another process woke {a_there_woke} times in {rounds} rounds of job b's output"
    );
    assert!(
        a_here_woke <= 1,
        "a watch of job a in the writer's process woke {a_here_woke} times in {rounds} rounds of job b's output"
    );

    // a prints: both of a's watches wake, and b's does not.
    s.append_log(a, &["a2\n".into()], None).await.unwrap();
    woken("a's output here", &mut a_here).await;
    woken("a's output there", &mut a_there).await;
    assert!(!b_there.has_changed(), "b's watch woke for job a's output");

    // Written by the other process, read here.
    other.append_log(a, &["a3\n".into()], None).await.unwrap();
    woken("a's output from another process", &mut a_here).await;

    // A watch dropped and made again still wakes.
    drop(a_there);
    let mut again = other.changes().subscribe_job(a);
    again.mark_seen();
    s.append_log(a, &["a4\n".into()], None).await.unwrap();
    woken("a's output at a new watch", &mut again).await;
    assert_eq!(again.job_id(), a);
}

pub async fn a_job_watch_wakes_when_its_job_ends(s: Store, other: Store) {
    let uid = user(&s).await;
    // Ending without output (a job that never ran) and with a reason.
    for outcome in [JobOutcome::cancelled(), JobOutcome::failed("no container")] {
        let id = job(&s, uid).await;
        let mut here = s.changes().subscribe_job(id);
        let mut there = other.changes().subscribe_job(id);
        here.mark_seen();
        there.mark_seen();
        s.finish_job(id, &outcome).await.unwrap();
        woken("the end, here", &mut here).await;
        woken("the end, in another process", &mut there).await;
    }
}

pub async fn log_pages_are_bounded_in_rows_and_bytes(s: Store, _other: Store) {
    let uid = user(&s).await;
    let id = job(&s, uid).await;
    let kib = |n: usize, c: char| std::iter::repeat_n(c, n * 1024).collect::<String>();
    // Ten chunks of 10 KiB: sequence numbers 1 … 10.
    let chunks: Vec<String> = (0..10).map(|i| kib(10, (b'a' + i) as char)).collect();
    s.append_log(id, &chunks, None).await.unwrap();

    let page = s.read_log_page(id, 0, 500, 35 * 1024).await.unwrap();
    let seqs: Vec<i64> = page.chunks.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3], "three 10 KiB chunks fit in 35 KiB");
    assert_eq!(page.chunks[2].text, chunks[2]);
    assert!(page.more);

    let page = s.read_log_page(id, 0, 500, 100).await.unwrap();
    assert_eq!(
        page.chunks.len(),
        1,
        "a chunk larger than the bound still comes"
    );
    assert_eq!(page.chunks[0].text, chunks[0]);
    assert!(page.more);

    let page = s.read_log_page(id, 2, 4, 1 << 30).await.unwrap();
    let seqs: Vec<i64> = page.chunks.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, vec![3, 4, 5, 6], "at most max_rows");
    assert!(page.more);

    let page = s.read_log_page(id, 7, 500, 1 << 30).await.unwrap();
    let seqs: Vec<i64> = page.chunks.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, vec![8, 9, 10]);
    assert!(!page.more, "the end of the output");
    let page = s.read_log_page(id, 10, 500, 1 << 30).await.unwrap();
    assert!(page.chunks.is_empty() && !page.more);

    // Bytes, not characters: two chunks of 3 000 two-byte characters.
    let wide = "é".repeat(3000);
    s.append_log(id, &[wide.clone(), wide.clone()], None)
        .await
        .unwrap();
    let page = s.read_log_page(id, 10, 500, 7000).await.unwrap();
    assert_eq!(
        page.chunks.len(),
        1,
        "6 000 + 6 000 bytes do not fit in 7 000"
    );
    assert_eq!(page.chunks[0].text, wide);
    assert!(page.more);
}

fn test_case(id: &str, outcome: TestOutcome, seconds: f64) -> TestCase {
    TestCase {
        id: id.to_string(),
        file: id.split("::").next().map(str::to_string),
        name: id.rsplit("::").next().unwrap().to_string(),
        outcome,
        duration_seconds: seconds,
        message: outcome.is_failure().then(|| format!("{id} broke")),
        traceback: outcome
            .is_failure()
            .then(|| "Traceback\n  line 1\n".to_string()),
    }
}

/// A job on `archive` (bytes) owned by `user_id`.
async fn job_on(store: &Store, user_id: UserId, archive: &[u8]) -> JobId {
    let digest = store.put_archive(archive).await.unwrap();
    store
        .create_job(&NewJob::new(user_id, digest))
        .await
        .unwrap()
        .id
}

pub async fn test_reports_are_stored_once_with_their_totals(s: Store, other: Store) {
    let owner = user(&s).await;
    let id = job(&s, owner).await;
    assert_eq!(s.job_report(id, &[]).await.unwrap(), None);
    assert_eq!(s.job_test_totals(id).await.unwrap(), None);
    // More cases than one INSERT carries, in report order, every outcome.
    let cases: Vec<TestCase> = (0..1203)
        .map(|i| {
            let outcome = TestOutcome::ALL[i % TestOutcome::ALL.len()];
            test_case(&format!("tests/test_x.py::TestA::test_{i}"), outcome, 0.25)
        })
        .collect();
    s.put_job_report(id, &JobReport::Cases(cases.clone()))
        .await
        .unwrap();
    // A second store (a retry) keeps the first.
    s.put_job_report(
        id,
        &JobReport::Missing {
            reason: "late".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        other.job_report(id, &[]).await.unwrap(),
        Some(JobReport::Cases(cases.clone()))
    );
    let failed: Vec<_> = cases
        .iter()
        .filter(|c| c.outcome == TestOutcome::Failed)
        .cloned()
        .collect();
    assert_eq!(
        other.job_report(id, &[TestOutcome::Failed]).await.unwrap(),
        Some(JobReport::Cases(failed))
    );
    let totals = TestTotals::of(&cases);
    assert_eq!(totals.passed, 201);
    assert_eq!(other.job_test_totals(id).await.unwrap(), Some(totals));
    // The job summary carries them, in GET /jobs and GET /jobs/{id}.
    let failing: Vec<_> = cases
        .iter()
        .filter(|c| c.outcome.is_failure())
        .cloned()
        .collect();
    assert_eq!(
        other
            .job_report(
                id,
                &[
                    TestOutcome::Xpassed,
                    TestOutcome::Failed,
                    TestOutcome::Error
                ]
            )
            .await
            .unwrap(),
        Some(JobReport::Cases(failing)),
        "several outcomes, in report order"
    );
    let listed = other.list_jobs_for_user(owner).await.unwrap();
    assert_eq!(listed[0].tests, Some(totals));
    let key = generate_api_key().unwrap();
    s.create_api_key(owner, "k", &key).await.unwrap();
    let (_, summary) = other
        .authenticate_with_job_summary(&key.hash, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.unwrap().summary.tests, Some(totals));
}

pub async fn a_job_without_a_report_says_why(s: Store, other: Store) {
    let owner = user(&s).await;
    let id = job(&s, owner).await;
    let reason = "pytest wrote no report: the job ended before its tests ran";
    s.put_job_report(
        id,
        &JobReport::Missing {
            reason: reason.into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        other.job_report(id, &[]).await.unwrap(),
        Some(JobReport::Missing {
            reason: reason.into()
        })
    );
    assert_eq!(other.job_test_totals(id).await.unwrap(), None);
    let listed = other.list_jobs_for_user(owner).await.unwrap();
    assert_eq!(listed[0].tests, None);
}

pub async fn flaky_tests_disagree_on_the_same_code_of_the_same_owner(s: Store, other: Store) {
    let (owner, stranger) = (user(&s).await, user(&s).await);
    let code = b"PK\x05\x06 the same code";
    let first = job_on(&s, owner, code).await;
    let second = job_on(&s, owner, code).await;
    let third = job_on(&s, owner, code).await;
    let elsewhere = job_on(&s, owner, b"PK\x05\x06 other code").await;
    let strangers = job_on(&s, stranger, code).await;
    let report = |flip: TestOutcome| {
        JobReport::Cases(vec![
            test_case("t.py::test_flips", flip, 0.1),
            test_case("t.py::test_steady", TestOutcome::Failed, 0.1),
        ])
    };
    s.put_job_report(first, &report(TestOutcome::Failed))
        .await
        .unwrap();
    s.put_job_report(second, &report(TestOutcome::Passed))
        .await
        .unwrap();
    s.put_job_report(third, &report(TestOutcome::Failed))
        .await
        .unwrap();
    s.put_job_report(elsewhere, &report(TestOutcome::Passed))
        .await
        .unwrap();
    s.put_job_report(strangers, &report(TestOutcome::Passed))
        .await
        .unwrap();
    let flaky = other.flaky_tests(first, &[]).await.unwrap();
    assert_eq!(
        flaky.get("t.py::test_flips"),
        Some(&vec![second]),
        "only the owner's jobs on the same digest: {flaky:?}"
    );
    assert!(!flaky.contains_key("t.py::test_steady"), "{flaky:?}");
    let flaky = other.flaky_tests(second, &[]).await.unwrap();
    assert_eq!(flaky.get("t.py::test_flips"), Some(&vec![first, third]));
    // Asked about the failures only, a passing case is not looked at.
    let flaky = other
        .flaky_tests(second, &[TestOutcome::Failed])
        .await
        .unwrap();
    assert!(flaky.is_empty(), "{flaky:?}");
    let flaky = other
        .flaky_tests(first, &[TestOutcome::Failed])
        .await
        .unwrap();
    assert_eq!(flaky.get("t.py::test_flips"), Some(&vec![second]));
    assert!(other.flaky_tests(elsewhere, &[]).await.unwrap().is_empty());
}

pub async fn reports_stored_as_parsed_commit_only_when_whole(s: Store, other: Store) {
    let owner = user(&s).await;
    let cases: Vec<TestCase> = (0..1200)
        .map(|i| test_case(&format!("t.py::test_{i}"), TestOutcome::ALL[i % 6], 0.5))
        .collect();
    let send = |end: Option<ReportChunk>| {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let cases = cases.clone();
        tokio::spawn(async move {
            for chunk in cases.chunks(500) {
                tx.send(ReportChunk::Cases(chunk.to_vec())).await.unwrap();
            }
            if let Some(end) = end {
                tx.send(end).await.unwrap();
            }
        });
        rx
    };
    let whole = job(&s, owner).await;
    s.put_job_cases(whole, send(Some(ReportChunk::Done)))
        .await
        .unwrap();
    assert_eq!(
        other.job_report(whole, &[]).await.unwrap(),
        Some(JobReport::Cases(cases.clone()))
    );
    assert_eq!(
        other.job_test_totals(whole).await.unwrap(),
        Some(TestTotals::of(&cases))
    );
    // Stored once: a second report for the job is ignored.
    s.put_job_cases(whole, send(Some(ReportChunk::Failed("late".into()))))
        .await
        .unwrap();
    assert_eq!(
        other.job_test_totals(whole).await.unwrap(),
        Some(TestTotals::of(&cases))
    );

    let bad = job(&s, owner).await;
    s.put_job_cases(bad, send(Some(ReportChunk::Failed("malformed".into()))))
        .await
        .unwrap();
    assert_eq!(
        other.job_report(bad, &[]).await.unwrap(),
        Some(JobReport::Missing {
            reason: "malformed".into()
        })
    );
    let cut = job(&s, owner).await;
    s.put_job_cases(cut, send(None)).await.unwrap();
    match other.job_report(cut, &[]).await.unwrap() {
        Some(JobReport::Missing { reason }) => assert!(reason.contains("stopped"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

// --- retention ---------------------------------------------------------------

/// Microseconds since the epoch, `days` ago.
fn days_ago(days: i64) -> i64 {
    ci_common::time::to_micros(ci_common::time::now() - chrono::Duration::days(days))
}

/// Moves a job's times `days` into the past, as if it had been submitted
/// (and, when it has, started and ended) then; only the test does this.
async fn age_job(s: &Store, id: JobId, days: i64) {
    sqlx::query(
        "UPDATE jobs SET created_at = $1, \
         started_at = CASE WHEN started_at IS NULL THEN NULL ELSE $1 END, \
         ended_at = CASE WHEN ended_at IS NULL THEN NULL ELSE $1 END WHERE id = $2",
    )
    .bind(days_ago(days))
    .bind(id.to_string())
    .execute(&s.writer)
    .await
    .unwrap();
}

/// Moves an archive's last upload `days` into the past.
async fn age_archive(s: &Store, digest: &str, days: i64) {
    sqlx::query("UPDATE archives SET created_at = $1 WHERE digest = $2")
        .bind(days_ago(days))
        .bind(digest)
        .execute(&s.writer)
        .await
        .unwrap();
}

/// Rows in `table` whose `column` is `value`, counted in the database.
async fn rows_where(s: &Store, table: &str, column: &str, value: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE {column} = $1"))
        .bind(value)
        .fetch_one(&s.reader)
        .await
        .unwrap()
}

/// A job with `lines` chunks of output and `cases` test cases, ended as `outcome`.
async fn ended_job(
    s: &Store,
    owner: UserId,
    lines: usize,
    cases: usize,
    outcome: JobOutcome,
) -> JobId {
    let id = job(s, owner).await;
    output_and_cases(s, id, lines, cases).await;
    if outcome.status == JobStatus::Completed {
        s.mark_running(id, "c", "img", None).await.unwrap();
    }
    s.finish_job(id, &outcome).await.unwrap();
    id
}

async fn output_and_cases(s: &Store, id: JobId, lines: usize, cases: usize) {
    let chunks: Vec<String> = (0..lines).map(|i| format!("line {i}\n")).collect();
    s.append_log(id, &chunks, None).await.unwrap();
    if cases > 0 {
        let cases = (0..cases)
            .map(|i| test_case(&format!("t.py::test_{i}"), TestOutcome::Passed, 0.1))
            .collect();
        s.put_job_report(id, &ci_common::test_results::JobReport::Cases(cases))
            .await
            .unwrap();
    }
}

/// Reaps ended jobs step by step until a step removes nothing; the sum, and
/// how many steps removed something.
async fn reap_jobs_to_the_end(
    s: &Store,
    cutoff: chrono::DateTime<chrono::Utc>,
    step: &ReapStep,
) -> (Reaped, usize) {
    let mut total = Reaped::default();
    let mut steps = 0;
    loop {
        let reaped = s.reap_ended_jobs(cutoff, step).await.unwrap();
        if reaped.is_empty() {
            return (total, steps);
        }
        assert!(
            reaped.log_chunks + reaped.test_cases <= u64::from(step.rows),
            "a step removed more rows than it may: {reaped:?}"
        );
        assert!(reaped.jobs <= u64::from(step.jobs), "{reaped:?}");
        total += reaped;
        steps += 1;
        assert!(steps < 10_000, "reaping never ends");
    }
}

fn thirty_days_ago() -> chrono::DateTime<chrono::Utc> {
    ci_common::time::now() - chrono::Duration::days(30)
}

pub async fn ended_jobs_past_retention_go_with_their_output_and_results(s: Store, other: Store) {
    let owner = user(&s).await;
    let old_passed = ended_job(&s, owner, 25, 12, JobOutcome::exited(0)).await;
    let old_cancelled = ended_job(&s, owner, 4, 0, JobOutcome::cancelled()).await;
    let old_failed = ended_job(&s, owner, 0, 3, JobOutcome::failed("could not run")).await;
    let recent = ended_job(&s, owner, 7, 5, JobOutcome::exited(1)).await;
    let just_in = ended_job(&s, owner, 2, 1, JobOutcome::exited(0)).await;
    for id in [old_passed, old_cancelled, old_failed] {
        age_job(&s, id, 40).await;
    }
    age_job(&s, recent, 29).await;

    let cutoff = thirty_days_ago();
    let uploaded_before =
        ci_common::time::now() - chrono::Duration::from_std(ARCHIVE_GRACE).unwrap();
    let counted = other.count_reapable(cutoff, uploaded_before).await.unwrap();
    // 25 lines + 4 lines + the failure's reason line; 12 + 3 cases.
    assert_eq!(
        (counted.jobs, counted.log_chunks, counted.test_cases),
        (3, 30, 15),
        "{counted:?}"
    );
    // Small steps: the work is spread over many short transactions.
    let step = ReapStep {
        jobs: 2,
        rows: 4,
        archives: 1,
        sessions: 1,
    };
    let (reaped, steps) = reap_jobs_to_the_end(&s, cutoff, &step).await;
    assert_eq!(
        Reaped {
            archives: 0,
            archive_bytes: 0,
            sessions: 0,
            ..counted
        },
        reaped
    );
    assert!(steps >= 45 / 4, "{steps} steps for 45 rows, 4 at a time");

    for id in [old_passed, old_cancelled, old_failed] {
        assert_eq!(other.get_job(id).await.unwrap(), None, "job {id} stays");
        assert!(other.read_log(id, 0, 100).await.unwrap().is_empty());
        assert_eq!(other.job_report(id, &[]).await.unwrap(), None);
        for table in ["job_events", "job_test_cases", "job_test_reports"] {
            assert_eq!(
                rows_where(&other, table, "job_id", &id.to_string()).await,
                0,
                "{table}"
            );
        }
    }
    for (id, lines, cases) in [(recent, 7, 5), (just_in, 2, 1)] {
        assert!(other.get_job(id).await.unwrap().is_some());
        assert_eq!(other.read_log(id, 0, 100).await.unwrap().len(), lines);
        assert_eq!(
            other.job_test_totals(id).await.unwrap().unwrap().passed,
            cases
        );
    }
    let listed: BTreeSet<JobId> = other
        .list_jobs_for_user(owner)
        .await
        .unwrap()
        .iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(listed, BTreeSet::from([recent, just_in]));
    // Done: nothing more to count or reap.
    assert_eq!(
        other
            .count_reapable(cutoff, uploaded_before)
            .await
            .unwrap()
            .jobs,
        0
    );
    assert!(s.reap_ended_jobs(cutoff, &step).await.unwrap().is_empty());
}

pub async fn queued_and_running_jobs_stay_whatever_their_age(s: Store, other: Store) {
    let owner = user(&s).await;
    let queued = job(&s, owner).await;
    output_and_cases(&s, queued, 3, 0).await;
    let running = job(&s, owner).await;
    s.mark_running(running, "c", "img", None).await.unwrap();
    output_and_cases(&s, running, 5, 2).await;
    let cancelling = job(&s, owner).await;
    s.mark_running(cancelling, "c", "img", None).await.unwrap();
    s.request_cancel(cancelling).await.unwrap();
    for id in [queued, running, cancelling] {
        age_job(&s, id, 4000).await;
    }
    // Even a cutoff in the future (prune everything that ended) spares them.
    let future = ci_common::time::now() + chrono::Duration::days(1);
    let counted = other.count_reapable(future, future).await.unwrap();
    assert_eq!(
        (
            counted.jobs,
            counted.log_chunks,
            counted.test_cases,
            counted.archives
        ),
        (0, 0, 0, 0),
        "{counted:?}"
    );
    let (reaped, _) = reap_jobs_to_the_end(&s, future, &ReapStep::default()).await;
    assert!(reaped.is_empty(), "{reaped:?}");
    assert!(s
        .reap_unreferenced_archives(future, &ReapStep::default())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(other.read_log(queued, 0, 100).await.unwrap().len(), 3);
    assert_eq!(other.read_log(running, 0, 100).await.unwrap().len(), 5);
    for id in [queued, running, cancelling] {
        let job = other.get_job(id).await.unwrap().unwrap();
        assert!(!job.status.is_terminal());
        assert!(other
            .get_archive(&job.archive_digest)
            .await
            .unwrap()
            .is_some());
    }
    // They go on as if nothing happened, and go once they ended long enough ago.
    s.append_log(running, &["more\n".to_string()], None)
        .await
        .unwrap();
    s.finish_job(running, &JobOutcome::exited(0)).await.unwrap();
    assert!(
        reap_jobs_to_the_end(&s, thirty_days_ago(), &ReapStep::default())
            .await
            .0
            .is_empty()
    );
    let (reaped, _) = reap_jobs_to_the_end(&s, future, &ReapStep::default()).await;
    assert_eq!(
        (reaped.jobs, reaped.log_chunks, reaped.test_cases),
        (1, 6, 2)
    );
    assert!(other.get_job(queued).await.unwrap().is_some());
}

pub async fn archives_go_once_no_job_refers_to_them(s: Store, other: Store) {
    let owner = user(&s).await;
    let cutoff = thirty_days_ago();
    let grace = ci_common::time::now() - chrono::Duration::from_std(ARCHIVE_GRACE).unwrap();
    // Only an old job on it: goes with the job. Bigger than a chunk.
    let only_old: Vec<u8> = (0..(crate::ARCHIVE_CHUNK_BYTES * 2 + 10))
        .map(|i| (i % 251) as u8)
        .collect();
    let only_old_job = job_on(&s, owner, &only_old).await;
    // An old job and a recent one on it: stays.
    let shared = b"PK shared".to_vec();
    let shared_old = job_on(&s, owner, &shared).await;
    let shared_new = job_on(&s, owner, &shared).await;
    // An old queued job on it: stays.
    let queued_on = b"PK queued".to_vec();
    let queued = job_on(&s, owner, &queued_on).await;
    // No job, uploaded long ago: goes; uploaded a moment ago: stays.
    let forgotten = s.put_archive(b"PK forgotten").await.unwrap();
    let fresh = s.put_archive(b"PK fresh").await.unwrap();
    for id in [only_old_job, shared_old, shared_new] {
        s.finish_job(id, &JobOutcome::cancelled()).await.unwrap();
    }
    for id in [only_old_job, shared_old, queued] {
        age_job(&s, id, 60).await;
    }
    let digest = |bytes: &[u8]| crate::archive_digest(bytes);
    for d in [
        digest(&only_old),
        digest(&shared),
        digest(&queued_on),
        forgotten.clone(),
    ] {
        age_archive(&s, &d, 60).await;
    }

    let counted = other.count_reapable(cutoff, grace).await.unwrap();
    let bytes = (only_old.len() + b"PK forgotten".len()) as u64;
    assert_eq!(
        (counted.jobs, counted.archives, counted.archive_bytes),
        (2, 2, bytes),
        "{counted:?}"
    );
    // While the old jobs are there, their archive is referenced: only the
    // forgotten one goes.
    let mut reaped = s
        .reap_unreferenced_archives(grace, &ReapStep::default())
        .await
        .unwrap();
    assert_eq!(
        (reaped.archives, reaped.archive_bytes),
        (1, 12),
        "{reaped:?}"
    );
    assert!(other
        .get_archive(&digest(&only_old))
        .await
        .unwrap()
        .is_some());
    reap_jobs_to_the_end(&s, cutoff, &ReapStep::default()).await;
    let step = ReapStep {
        archives: 1,
        ..ReapStep::default()
    };
    loop {
        let one = s.reap_unreferenced_archives(grace, &step).await.unwrap();
        if one.is_empty() {
            break;
        }
        assert_eq!(one.archives, 1, "{one:?}");
        reaped += one;
    }
    assert_eq!(
        (reaped.archives, reaped.archive_bytes),
        (2, bytes),
        "{reaped:?}"
    );
    assert_eq!(other.get_archive(&digest(&only_old)).await.unwrap(), None);
    assert_eq!(
        rows_where(&other, "archive_chunks", "digest", &digest(&only_old)).await,
        0
    );
    assert_eq!(other.get_archive(&forgotten).await.unwrap(), None);
    assert_eq!(
        other.get_archive(&digest(&shared)).await.unwrap(),
        Some(shared)
    );
    assert_eq!(
        other.get_archive(&digest(&queued_on)).await.unwrap(),
        Some(queued_on)
    );
    assert!(other.get_archive(&fresh).await.unwrap().is_some());
    assert!(other.get_job(shared_new).await.unwrap().is_some());
}

pub async fn an_archive_uploaded_again_is_not_reaped_before_its_job(s: Store, other: Store) {
    let owner = user(&s).await;
    let bytes = b"PK uploaded twice".to_vec();
    let digest = s.put_archive(&bytes).await.unwrap();
    age_archive(&s, &digest, 90).await;
    // The same code again: the replica finds it stored, and its job follows.
    assert_eq!(other.put_archive(&bytes).await.unwrap(), digest);
    let grace = ci_common::time::now() - chrono::Duration::from_std(ARCHIVE_GRACE).unwrap();
    assert!(s
        .reap_unreferenced_archives(grace, &ReapStep::default())
        .await
        .unwrap()
        .is_empty());
    let id = job_on(&other, owner, &bytes).await;
    assert_eq!(
        other.get_job(id).await.unwrap().unwrap().archive_digest,
        digest
    );
    assert_eq!(s.get_archive(&digest).await.unwrap(), Some(bytes));
}

pub async fn sessions_of_revoked_keys_and_deactivated_users_go(s: Store, other: Store) {
    let keep_user = user(&s).await;
    let kept = generate_api_key().unwrap();
    s.create_api_key(keep_user, "kept", &kept).await.unwrap();
    let revoked = generate_api_key().unwrap();
    let revoked_rec = s
        .create_api_key(keep_user, "revoked", &revoked)
        .await
        .unwrap();
    let gone_user = user(&s).await;
    let owners_key = generate_api_key().unwrap();
    s.create_api_key(gone_user, "owner gone", &owners_key)
        .await
        .unwrap();
    assert!(s.create_session("kept-1", &kept.hash).await.unwrap());
    assert!(s.create_session("kept-2", &kept.hash).await.unwrap());
    assert!(s.create_session("revoked-1", &revoked.hash).await.unwrap());
    assert!(s.create_session("revoked-2", &revoked.hash).await.unwrap());
    assert!(s
        .create_session("owner-gone", &owners_key.hash)
        .await
        .unwrap());
    s.revoke_api_key(revoked_rec.id).await.unwrap();
    s.set_user_active(gone_user, false).await.unwrap();

    let never = ci_common::time::now() - chrono::Duration::days(36500);
    assert_eq!(
        other.count_reapable(never, never).await.unwrap().sessions,
        3
    );
    let step = ReapStep {
        sessions: 2,
        ..ReapStep::default()
    };
    let mut reaped = 0;
    loop {
        let one = s.reap_ended_sessions(&step).await.unwrap();
        assert!(one.sessions <= 2);
        if one.is_empty() {
            break;
        }
        reaped += one.sessions;
    }
    assert_eq!(reaped, 3);
    // Reactivating the owner does not bring a reaped session back.
    s.set_user_active(gone_user, true).await.unwrap();
    for gone in ["revoked-1", "revoked-2", "owner-gone"] {
        assert_eq!(
            other.look_up_session(gone).await.unwrap(),
            SessionLookup::Unknown,
            "{gone}"
        );
    }
    for live in ["kept-1", "kept-2"] {
        assert_eq!(
            other.look_up_session(live).await.unwrap(),
            SessionLookup::Active {
                key_hash: kept.hash.clone()
            }
        );
    }
}

pub async fn freed_pages_are_given_back_where_the_file_keeps_them(s: Store, other: Store) {
    let owner = user(&s).await;
    let big = "x".repeat(4000);
    let mut ids = Vec::new();
    for _ in 0..20 {
        let id = job(&s, owner).await;
        let chunks: Vec<String> = (0..50).map(|i| format!("{i} {big}\n")).collect();
        s.append_log(id, &chunks, None).await.unwrap();
        s.finish_job(id, &JobOutcome::exited(0)).await.unwrap();
        age_job(&s, id, 45).await;
        ids.push(id);
    }
    let pages = s.file_pages().await.unwrap();
    let (reaped, _) = reap_jobs_to_the_end(&s, thirty_days_ago(), &ReapStep::default()).await;
    assert_eq!(reaped.jobs, 20);
    match (s.backend(), pages) {
        (crate::Backend::Sqlite, Some(before)) => {
            // A fresh file gives its free pages back a few at a time.
            assert!(before.incremental, "{before:?}");
            let freed = s.file_pages().await.unwrap().unwrap();
            assert!(freed.free > 200, "4 MB of output freed only {freed:?}");
            let mut given = 0;
            loop {
                let n = s.give_back_free_pages(64).await.unwrap();
                assert!(n <= 64, "{n}");
                if n == 0 {
                    break;
                }
                given += n;
            }
            let after = other.file_pages().await.unwrap().unwrap();
            assert_eq!(after.free, 0, "{after:?}");
            assert!(given >= freed.free, "{given} of {freed:?}");
            assert!(
                after.pages + given <= freed.pages + 1,
                "{after:?} {freed:?}"
            );
            // A file that has it needs no rewrite.
            assert!(!s.rewrite_for_incremental_vacuum().await.unwrap());
        }
        (crate::Backend::Postgres, None) => {
            // Autovacuum's work.
            assert_eq!(s.give_back_free_pages(64).await.unwrap(), 0);
            assert!(!s.rewrite_for_incremental_vacuum().await.unwrap());
        }
        other => panic!("{other:?}"),
    }
}

/// A job of `project` (if any) on `archive` that ran, left `report` and
/// ended, as the controller leaves one.
async fn ended_project_job(
    store: &Store,
    user_id: UserId,
    project: Option<&str>,
    archive: &[u8],
    report: &JobReport,
) -> JobId {
    let id = queued_project_job(store, user_id, project, archive).await;
    store.mark_running(id, "c", "img", None).await.unwrap();
    store.put_job_report(id, report).await.unwrap();
    store.finish_job(id, &JobOutcome::exited(1)).await.unwrap();
    id
}

async fn queued_project_job(
    store: &Store,
    user_id: UserId,
    project: Option<&str>,
    archive: &[u8],
) -> JobId {
    let digest = store.put_archive(archive).await.unwrap();
    let options = JobOptions {
        project: project.map(str::to_string),
        ..JobOptions::default()
    };
    store
        .create_job(&NewJob {
            options,
            ..NewJob::new(user_id, digest)
        })
        .await
        .unwrap()
        .id
}

fn report_of(cases: &[(&str, TestOutcome)]) -> JobReport {
    JobReport::Cases(
        cases
            .iter()
            .map(|(id, outcome)| test_case(id, *outcome, 0.5))
            .collect(),
    )
}

fn ids(names: &[&str]) -> std::collections::HashSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

pub async fn new_failures_did_not_fail_in_the_projects_previous_job(s: Store, other: Store) {
    use TestOutcome::{Error, Failed, Passed, Skipped, Xpassed};
    let (owner, stranger) = (user(&s).await, user(&s).await);
    let first = ended_project_job(
        &s,
        owner,
        Some("calc"),
        b"PK v1",
        &report_of(&[
            ("t.py::a", Passed),
            ("t.py::b", Failed),
            ("t.py::c", Skipped),
        ]),
    )
    .await;
    assert_eq!(
        other.new_failures(first).await.unwrap(),
        ids(&[]),
        "the project's first results have nothing to be new against"
    );
    // Ended later, but none of them is the project's previous job of the owner:
    // another project, a job without results, another user's.
    ended_project_job(
        &s,
        owner,
        Some("other"),
        b"PK v1",
        &report_of(&[("t.py::a", Failed)]),
    )
    .await;
    ended_project_job(
        &s,
        owner,
        Some("calc"),
        b"PK v2",
        &JobReport::Missing {
            reason: "never reached pytest".into(),
        },
    )
    .await;
    ended_project_job(
        &s,
        stranger,
        Some("calc"),
        b"PK v1",
        &report_of(&[("t.py::b", Passed)]),
    )
    .await;

    let now = report_of(&[
        ("t.py::a", Failed),
        ("t.py::b", Failed),
        ("t.py::c", Error),
        ("t.py::d", Xpassed),
        ("t.py::e", Passed),
    ]);
    let second = queued_project_job(&s, owner, Some("calc"), b"PK v2").await;
    s.mark_running(second, "c", "img", None).await.unwrap();
    s.put_job_report(second, &now).await.unwrap();
    let expected = ids(&["t.py::a", "t.py::c", "t.py::d"]);
    assert_eq!(
        other.new_failures(second).await.unwrap(),
        expected,
        "passed, skipped or absent before: new; failed before: old (not ended yet)"
    );
    s.finish_job(second, &JobOutcome::exited(1)).await.unwrap();
    assert_eq!(other.new_failures(second).await.unwrap(), expected, "ended");
    assert_eq!(
        other.new_failures(first).await.unwrap(),
        ids(&[]),
        "a job that ended later is no job's previous one"
    );

    let third = ended_project_job(
        &s,
        owner,
        Some("calc"),
        b"PK v1",
        &report_of(&[("t.py::a", Failed), ("t.py::e", Failed)]),
    )
    .await;
    assert_eq!(other.new_failures(third).await.unwrap(), ids(&["t.py::e"]));

    let projectless = ended_project_job(
        &s,
        owner,
        None,
        b"PK v1",
        &report_of(&[("t.py::a", Passed)]),
    )
    .await;
    let projectless_later = ended_project_job(
        &s,
        owner,
        None,
        b"PK v1",
        &report_of(&[("t.py::a", Failed)]),
    )
    .await;
    assert_ne!(projectless, projectless_later);
    assert_eq!(
        other.new_failures(projectless_later).await.unwrap(),
        ids(&[]),
        "jobs without a project have no history"
    );
}

pub async fn a_projects_tests_have_a_bounded_history(s: Store, other: Store) {
    use TestOutcome::{Failed, Passed, Skipped};
    let (owner, stranger) = (user(&s).await, user(&s).await);
    let empty = other.project_tests(owner, "calc").await.unwrap();
    assert!(empty.tests.is_empty());
    assert!(empty.jobs.is_empty());

    let a = ended_project_job(
        &s,
        owner,
        Some("calc"),
        b"PK v1",
        &report_of(&[("t.py::a", Passed), ("t.py::b", Failed)]),
    )
    .await;
    ended_project_job(
        &s,
        owner,
        Some("calc"),
        b"PK v1",
        &JobReport::Missing {
            reason: "never reached pytest".into(),
        },
    )
    .await;
    ended_project_job(
        &s,
        owner,
        Some("other"),
        b"PK v1",
        &report_of(&[("t.py::a", Failed)]),
    )
    .await;
    ended_project_job(
        &s,
        stranger,
        Some("calc"),
        b"PK v1",
        &report_of(&[("t.py::a", Failed)]),
    )
    .await;
    let b = ended_project_job(
        &s,
        owner,
        Some("calc"),
        b"PK v2",
        &report_of(&[
            ("t.py::a", Failed),
            ("t.py::b", Failed),
            ("t.py::c", Skipped),
        ]),
    )
    .await;
    let c = ended_project_job(
        &s,
        owner,
        Some("calc"),
        b"PK v1",
        &report_of(&[("t.py::a", Failed), ("t.py::b", Passed)]),
    )
    .await;
    // Not ended: not history yet.
    let running = queued_project_job(&s, owner, Some("calc"), b"PK v1").await;
    s.put_job_report(running, &report_of(&[("t.py::a", Passed)]))
        .await
        .unwrap();

    let history = other.project_tests(owner, "calc").await.unwrap();
    assert_eq!(history.project, "calc");
    assert_eq!(history.jobs, [c, b, a], "newest first, with results only");
    let found: Vec<_> = history
        .tests
        .iter()
        .map(|t| (t.id.as_str(), t.recent.clone(), t.flaky))
        .collect();
    assert_eq!(
        found,
        [
            ("t.py::a", vec![Failed, Failed, Passed], true),
            ("t.py::b", vec![Passed, Failed, Failed], true),
            ("t.py::c", vec![Skipped], false),
        ],
        "by id; flaky when failed and passed on the same code (v1)"
    );
    let a_test = &history.tests[0];
    assert_eq!((a_test.runs, a_test.failures), (3, 2));
    assert!((a_test.failure_rate - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(a_test.median_duration_seconds, 0.5);
    assert_eq!(a_test.last_outcome, Failed);
    assert_eq!(
        other.project_tests(stranger, "calc").await.unwrap().tests[0].recent,
        [Failed],
        "each owner sees their own jobs"
    );

    // The window: only the latest jobs count.
    let mut latest = Vec::new();
    for _ in 0..ci_common::test_results::PROJECT_HISTORY_JOBS {
        latest.push(
            ended_project_job(
                &s,
                owner,
                Some("calc"),
                b"PK v3",
                &report_of(&[("t.py::z", Passed)]),
            )
            .await,
        );
    }
    latest.reverse();
    let history = other.project_tests(owner, "calc").await.unwrap();
    assert_eq!(history.jobs, latest);
    let names: Vec<_> = history.tests.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(names, ["t.py::z"]);
}

pub async fn a_queued_jobs_place_counts_everyones_earlier_queued_jobs(s: Store, other: Store) {
    let (a, b) = (user(&s).await, user(&s).await);
    let first = job(&s, a).await;
    let second = job(&s, b).await;
    let third = job(&s, a).await;
    let places = |ids: [JobId; 3]| {
        let other = other.clone();
        async move {
            let mut places = Vec::new();
            for id in ids {
                places.push(other.queue_position(id).await.unwrap());
            }
            places
        }
    };
    assert_eq!(
        places([first, second, third]).await,
        [Some(1), Some(2), Some(3)]
    );
    s.mark_running(first, "c", "img", None).await.unwrap();
    assert_eq!(
        places([first, second, third]).await,
        [None, Some(1), Some(2)],
        "a started job leaves the queue"
    );
    s.request_cancel(second).await.unwrap();
    s.finish_job(second, &JobOutcome::cancelled())
        .await
        .unwrap();
    assert_eq!(places([first, second, third]).await, [None, None, Some(1)]);
    assert_eq!(other.queue_position(JobId::random()).await.unwrap(), None);
}
