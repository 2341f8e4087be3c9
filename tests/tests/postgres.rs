//! The whole system on PostgreSQL: replicas share the database, a replica
//! killed mid-stream costs the client nothing, and losing every database
//! connection at once loses no job and no line.
//!
//! Each test gets a fresh database on the server `CI_TEST_POSTGRES_URL` names
//! (`scripts/test` starts a throwaway one).

#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use std::time::Duration;

use ci_testkit::status::{LEADER, STANDBY};
use ci_testkit::{
    assert_same_lines, id_after, lines_with, postgres, run, slow_project, slow_ticks, wait_for,
    wait_for_value, CiOutput, RunningCi, TestSystem, JOB_DEADLINE,
};

/// The slow job stored all its ticks once each, and `ci wait --all` printed
/// exactly what is stored.
fn assert_whole_output(sys: &TestSystem, id: ci_common::JobId, seconds: u32, waited: &CiOutput) {
    let stored = sys.stored_output_piped(id).unwrap();
    assert_same_lines(
        "the ticks the job stored",
        &lines_with(&stored, "tick "),
        &slow_ticks(seconds),
    );
    assert_same_lines(
        "`ci wait --all` against what is stored",
        &waited.stdout_lines(),
        &stored.lines().collect::<Vec<_>>(),
    );
}

fn stored_ticks(sys: &TestSystem, id: ci_common::JobId) -> usize {
    sys.stored_output(id)
        .map(|out| lines_with(&out, "tick ").len())
        .unwrap_or(0)
}

#[test]
fn submitted_through_one_replica_followed_through_another_that_is_killed_mid_stream() {
    const SECONDS: u32 = 10;
    let mut sys = TestSystem::options().postgres().start();
    let replica = sys.start_replica();
    let project = slow_project(SECONDS);

    // Submitted through the replica...
    let submitted = run(sys
        .ci()
        .env("CI_SERVER_URL", &replica)
        .args(["submit", "test", "--async"])
        .current_dir(project.path()));
    submitted.assert_code(0);
    let id = submitted.submitted_job_id().unwrap();

    // ...followed through the main server, which dies mid-stream.
    let mut wait = RunningCi::spawn(sys.ci().args(["wait", "--all", &id.to_string()]));
    wait.wait_for_stdout("tick 002", JOB_DEADLINE, |out| out.contains("tick 002"));
    sys.kill_server();
    let at_kill = stored_ticks(&sys, id);
    wait_for("output while the server is down", JOB_DEADLINE, || {
        stored_ticks(&sys, id) >= at_kill + 2
    });
    assert!(!wait.has_exited(), "`ci wait` must keep trying");
    sys.start_server();

    let waited = wait.finish(JOB_DEADLINE);
    waited.assert_code(0);
    let stored = sys.stored_output_piped(id).unwrap();
    assert_same_lines(
        "the ticks `ci wait` printed",
        &lines_with(&waited.stdout, "tick "),
        &slow_ticks(SECONDS),
    );
    assert_same_lines(
        "`ci wait --all` against what is stored",
        &waited.stdout_lines(),
        &stored.lines().collect::<Vec<_>>(),
    );

    // Both replicas tell the same story.
    let list = |url: &str| -> serde_json::Value {
        let out = run(sys.ci().env("CI_SERVER_URL", url).args(["list", "--json"]));
        out.assert_code(0);
        serde_json::from_str(&out.stdout).unwrap()
    };
    let through_main = list(&sys.server_url());
    let through_replica = list(&replica);
    assert_eq!(through_main, through_replica);
    assert_eq!(through_main[0]["job_id"], id.to_string());
    assert_eq!(through_main[0]["status"], "completed");
    assert_eq!(through_main[0]["success"], true);
    sys.assert_settled();
}

/// The services whose change listener must be connected: the main server
/// and the controller.
const LISTENING_SERVICES: [&str; 2] = ["ci-controller", "ci-server"];

/// Waits until the server's and the controller's change listeners listen
/// on sessions none of which is in `before` (they were ended, and the
/// services opened new ones); the sessions.
fn wait_for_new_listeners(
    sys: &TestSystem,
    what: &str,
    before: &[(String, i32)],
) -> Vec<(String, i32)> {
    wait_for_value(what, JOB_DEADLINE, || {
        let now = sys.listening_services().ok()?;
        let names: Vec<&str> = now.iter().map(|(name, _)| name.as_str()).collect();
        let fresh = now
            .iter()
            .all(|(_, pid)| !before.iter().any(|(_, old)| old == pid));
        (names == LISTENING_SERVICES && fresh).then_some(now)
    })
}

/// What the controller has logged so far, for failure messages.
fn controller_log(sys: &TestSystem) -> String {
    sys.service_logs()
        .into_iter()
        .find(|log| log.name == "controller")
        .map(|log| log.text)
        .unwrap_or_default()
}

/// The name of the test's database.
fn database_name(sys: &TestSystem) -> String {
    let url = sys.postgres_url().unwrap();
    let (_, name) = url.rsplit_once('/').unwrap();
    name.to_string()
}

/// Runs `sql` on the PostgreSQL server as its owner; the rows affected.
fn admin_sql(sql: &str) -> u64 {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(postgres::admin_sql(&postgres::server_url(), sql))
        .unwrap()
}

/// Ends every connection to the test's database from the server's side, as a
/// database restart or a failover would; how many it ended.
fn drop_every_connection(sys: &TestSystem) -> u64 {
    admin_sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{}' AND pid <> pg_backend_pid()",
        database_name(sys)
    ))
}

/// Lets no one connect to the test's database (`false`), or everyone again.
/// Unlike a connection limit, this holds for superusers too.
fn allow_connections(sys: &TestSystem, allow: bool) {
    admin_sql(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS {allow}",
        database_name(sys)
    ));
}

#[test]
fn losing_every_database_connection_loses_no_job_and_no_line() {
    const SECONDS: u32 = 10;
    let sys = TestSystem::options().postgres().start();
    let project = slow_project(SECONDS);

    let mut submit = RunningCi::spawn(
        sys.ci()
            .args(["submit", "test"])
            .current_dir(project.path()),
    );
    submit.wait_for_stdout("the first tick", JOB_DEADLINE, |out| {
        out.contains("tick 001")
    });
    let id = id_after(&submit.stderr(), "Job ID: ").unwrap();
    let mut wait = RunningCi::spawn(sys.ci().args(["wait", &id.to_string()]));

    // Twice, with output still reaching the database in between: the
    // controller and the server got new connections and carried on. The
    // loss was felt: the change listeners of the server and the controller
    // (LISTEN/NOTIFY) lost their sessions and listen on new ones both times.
    let mut listening = wait_for_new_listeners(&sys, "the change listeners", &[]);
    for round in 1..=2 {
        let before = stored_ticks(&sys, id);
        let ended = drop_every_connection(&sys);
        assert!(
            ended > 0,
            "no connection to end: is the system on PostgreSQL?"
        );
        wait_for(
            "output after the connections were lost",
            JOB_DEADLINE,
            || stored_ticks(&sys, id) >= before + 2,
        );
        listening = wait_for_new_listeners(
            &sys,
            &format!("the change listeners to listen again after loss {round}"),
            &listening,
        );
    }

    let submitted = submit.finish(JOB_DEADLINE);
    let waited = wait.finish(JOB_DEADLINE);
    let stored = sys.stored_output_piped(id).unwrap();
    submitted.assert_code(0);
    waited.assert_code(0);
    assert_same_lines(
        "the ticks the job stored",
        &lines_with(&stored, "tick "),
        &slow_ticks(SECONDS),
    );
    assert_same_lines(
        "the submit's output against what is stored",
        &submitted.stdout_lines(),
        &stored.lines().collect::<Vec<_>>(),
    );
    assert!(
        stored.ends_with(&waited.stdout),
        "`ci wait` printed something else than the end of the output\n{waited}"
    );
    assert_eq!(waited.stdout.matches("SLOW-END").count(), 1, "{waited}");

    // And the system still takes new work.
    let after = sys.submit_sync(&sys.copy_fixture("no-requirements"));
    after.assert_code(0);
    sys.assert_settled();
}

#[test]
fn a_database_out_of_reach_for_longer_than_the_lease_loses_no_job_and_no_line() {
    const SECONDS: u32 = 20;
    let mut sys = TestSystem::options().postgres().start();
    let project = slow_project(SECONDS);
    let id = sys.submit_async(&project);
    let mut wait = RunningCi::spawn(sys.ci().args(["wait", "--all", &id.to_string()]));
    wait.wait_for_stdout("tick 002", JOB_DEADLINE, |out| out.contains("tick 002"));
    let listening = wait_for_new_listeners(&sys, "the change listeners", &[]);

    // The database goes out of reach: every connection ends and new ones are
    // refused, until the controller's lease (5 s) has run out, so that it
    // must stop acting.
    allow_connections(&sys, false);
    let ended = drop_every_connection(&sys);
    assert!(
        ended > 0,
        "no connection to end: is the system on PostgreSQL?"
    );
    sys.wait_for_controller_status(STANDBY, JOB_DEADLINE);
    allow_connections(&sys, true);

    // It stands by, takes the lease again once the database answers, adopts
    // the job's container and stores what the job printed meanwhile.
    sys.wait_for_controller_status(LEADER, JOB_DEADLINE);
    let running = sys.controller_is_running();
    assert!(
        running,
        "the controller exited instead of standing by:\n{}",
        controller_log(&sys)
    );
    // The change listeners of the server and the controller could not
    // reconnect at once; they kept trying and listen again.
    wait_for_new_listeners(&sys, "every change listener to listen again", &listening);
    let waited = wait.finish(JOB_DEADLINE);
    waited.assert_code(0);
    assert_whole_output(&sys, id, SECONDS, &waited);
    let job = sys.job(id).unwrap();
    assert_eq!(job.success, Some(true), "{job:?}");

    // And the system still takes new work.
    let after = sys.submit_sync(&sys.copy_fixture("no-requirements"));
    after.assert_code(0);
    sys.assert_settled();
}

/// How long a controller's lease lasts without renewal (`LeaseConfig`).
const LEASE_TTL: Duration = Duration::from_secs(5);

#[test]
fn a_lease_renewal_that_hangs_stops_the_controller_before_the_lease_expires() {
    use sqlx::Connection as _;
    const SECONDS: u32 = 12;
    let mut sys = TestSystem::options().postgres().start();
    let project = slow_project(SECONDS);
    let id = sys.submit_async(&project);
    let mut wait = RunningCi::spawn(sys.ci().args(["wait", "--all", &id.to_string()]));
    wait.wait_for_stdout("tick 002", JOB_DEADLINE, |out| out.contains("tick 002"));

    // Another session locks the lease row, so the controller's next renewal
    // waits without an answer, as on a connection whose peer vanished.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut conn = runtime
        .block_on(sqlx::PgConnection::connect(sys.postgres_url().unwrap()))
        .unwrap();
    runtime
        .block_on(sqlx::query("BEGIN").execute(&mut conn))
        .unwrap();
    let locked = runtime
        .block_on(sqlx::query("SELECT holder FROM leases FOR UPDATE").fetch_all(&mut conn))
        .unwrap();
    assert_eq!(locked.len(), 1, "the controller holds no lease row");

    // The last renewal was at most a second ago, so the lease runs out at
    // most `LEASE_TTL` from now: the controller must have stopped by then.
    sys.wait_for_controller_status(STANDBY, LEASE_TTL);
    runtime
        .block_on(sqlx::query("ROLLBACK").execute(&mut conn))
        .unwrap();
    runtime.block_on(conn.close()).unwrap();

    sys.wait_for_controller_status(LEADER, JOB_DEADLINE);
    let waited = wait.finish(JOB_DEADLINE);
    waited.assert_code(0);
    assert_whole_output(&sys, id, SECONDS, &waited);
    let running = sys.controller_is_running();
    assert!(running, "the controller exited:\n{}", controller_log(&sys));
    sys.assert_settled();
}
