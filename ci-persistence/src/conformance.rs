//! The behaviour every backend must show, written against [`Store`]'s public
//! interface only. Each backend's test file runs all of it through
//! [`conformance_suite!`](crate::conformance_suite) with its own way of making
//! a fresh, empty store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use ci_common::api::JobSummary;
use ci_common::{generate_api_key, JobStatus};
use uuid::Uuid;

use ci_common::test_results::{JobReport, TestCase, TestOutcome, TestTotals};

use crate::{Channel, JobOutcome, NewJob, ReportChunk, Store, StoreError};

/// Runs every conformance test as its own `#[tokio::test]`. `$make` is an
/// expression of type `impl Fn() -> impl Future<Output = (Store, Store)>`,
/// giving two handles on one fresh database opened independently, as two
/// processes would.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@tests $make;
            users_are_created_found_and_unique,
            users_can_be_deactivated_and_activated,
            api_keys_authenticate_until_revoked,
            a_key_and_a_job_are_read_together,
            archives_are_content_addressed,
            jobs_follow_their_life_cycle,
            illegal_transitions_are_refused,
            failure_reason_is_the_last_output,
            cancellation_is_recorded_once,
            output_is_read_after_a_sequence_number,
            output_of_an_ended_job_is_refused,
            concurrent_appenders_lose_nothing,
            concurrent_job_creation_from_two_processes,
            lease_has_one_holder_at_a_time,
            changes_wake_other_processes,
            test_reports_are_stored_once_with_their_totals,
            a_job_without_a_report_says_why,
            flaky_tests_disagree_on_the_same_code_of_the_same_owner,
            reports_stored_as_parsed_commit_only_when_whole,
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let make = $make;
                let (a, b) = make().await;
                $crate::conformance::$name(a, b).await;
            }
        )*
    };
}

async fn user(store: &Store) -> Uuid {
    let email = format!("{}@example.com", Uuid::new_v4().simple());
    store.create_user("Test User", &email).await.unwrap().id
}

async fn job(store: &Store, user_id: Uuid) -> Uuid {
    let digest = store
        .put_archive(b"PK\x05\x06 not really a zip")
        .await
        .unwrap();
    let id = Uuid::new_v4();
    store
        .create_job(&NewJob {
            id,
            user_id,
            archive_digest: digest,
        })
        .await
        .unwrap();
    id
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
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
    assert!(s.get_user(Uuid::new_v4()).await.unwrap().is_none());
    let dup = s.create_user("Other", "ada@example.com").await;
    assert!(matches!(dup, Err(StoreError::AlreadyExists(_))), "{dup:?}");
    let v = s.create_user("Bob", "bob@example.com").await.unwrap();
    let all: Vec<Uuid> = s.list_users().await.unwrap().iter().map(|u| u.id).collect();
    assert_eq!(all, vec![u.id, v.id]);
}

pub async fn users_can_be_deactivated_and_activated(s: Store, _: Store) {
    let id = user(&s).await;
    assert!(!s.set_user_active(id, false).await.unwrap().is_active);
    assert!(!s.get_user(id).await.unwrap().unwrap().is_active);
    assert!(s.set_user_active(id, true).await.unwrap().is_active);
    assert!(matches!(
        s.set_user_active(Uuid::new_v4(), false).await,
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
        s.create_api_key(Uuid::new_v4(), "x", &key2).await,
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
        s.revoke_api_key(Uuid::new_v4()).await,
        Err(StoreError::NotFound(_))
    ));
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
        .authenticate_with_job(&key.hash, Uuid::new_v4())
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
        Some((owner, Some((owner, JobSummary::from(&full)))))
    );
    let (_, j) = summary_of(theirs).await.unwrap();
    assert_eq!(j.unwrap().0, someone);
    assert_eq!(summary_of(Uuid::new_v4()).await, Some((owner, None)));
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
    let mine: Vec<Uuid> = s
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
    let unfinished: Vec<Uuid> = s
        .list_unfinished_jobs()
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(unfinished, vec![first, second, stranger], "oldest first");

    let running = s.mark_running(first, "c0ffee", "img:1").await.unwrap();
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
    let unfinished: Vec<Uuid> = s
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
        s.mark_running(id, "c", "i").await,
        s.finish_job(id, &JobOutcome::exited(0)).await,
        s.finish_job(id, &JobOutcome::cancelled()).await,
    ] {
        assert!(
            matches!(result, Err(StoreError::IllegalTransition(t)) if t.from == JobStatus::Cancelled),
            "{result:?}"
        );
    }
    let missing = s.mark_running(Uuid::new_v4(), "c", "i").await;
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
        s.request_cancel(Uuid::new_v4()).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn output_is_read_after_a_sequence_number(s: Store, other: Store) {
    let id = job(&s, user(&s).await).await;
    let last = s
        .append_log(id, &["a\n".into(), "b\n".into()], Some("t1"))
        .await
        .unwrap();
    assert_eq!(last, 2);
    let last = s.append_log(id, &["c\n".into()], Some("t2")).await.unwrap();
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
    assert_eq!((j.last_seq, j.log_cursor.as_deref()), (3, Some("t2")));
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
        s.append_log(Uuid::new_v4(), &["x".into()], None).await,
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
            store
                .create_job(&NewJob {
                    id: Uuid::new_v4(),
                    user_id: uid,
                    archive_digest: digest,
                })
                .await
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
    let mut events_there = other.changes().subscribe(Channel::Events);
    jobs_here.borrow_and_update();
    jobs_there.borrow_and_update();
    events_there.borrow_and_update();
    let id = job(&s, uid).await;
    within("a local wake-up", jobs_here.changed())
        .await
        .unwrap();
    within("a wake-up from another process", jobs_there.changed())
        .await
        .unwrap();
    s.append_log(id, &["hello\n".into()], None).await.unwrap();
    within(
        "an output wake-up from another process",
        events_there.changed(),
    )
    .await
    .unwrap();
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
async fn job_on(store: &Store, user_id: Uuid, archive: &[u8]) -> Uuid {
    let digest = store.put_archive(archive).await.unwrap();
    let id = Uuid::new_v4();
    store
        .create_job(&NewJob {
            id,
            user_id,
            archive_digest: digest,
        })
        .await
        .unwrap();
    id
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
    assert_eq!(summary.unwrap().1.tests, Some(totals));
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
    let flaky = other.flaky_tests(first).await.unwrap();
    assert_eq!(
        flaky.get("t.py::test_flips"),
        Some(&vec![second]),
        "only the owner's jobs on the same digest: {flaky:?}"
    );
    assert!(!flaky.contains_key("t.py::test_steady"), "{flaky:?}");
    let flaky = other.flaky_tests(second).await.unwrap();
    assert_eq!(flaky.get("t.py::test_flips"), Some(&vec![first, third]));
    assert!(other.flaky_tests(elsewhere).await.unwrap().is_empty());
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
