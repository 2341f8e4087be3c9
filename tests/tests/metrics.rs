//! Operating the service (issue 16): a real Prometheus scrapes the server
//! and the controller while real jobs run, and what it stored is what the
//! jobs did; the JSON logs are JSON, line by line, with the access line's
//! fields and never the key.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use std::time::{Duration, SystemTime};

use ci_common::JobStatus;
use ci_testkit::prometheus::{self, Target};
use ci_testkit::{copy_fixture, run_within, slow_project, TestSystem, JOB_DEADLINE};

/// How long Prometheus may take to scrape again (it scrapes every second).
const SCRAPE_DEADLINE: Duration = Duration::from_secs(60);
/// A job that installs from the real PyPI, on a slow day.
const DOWNLOAD_DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn prometheus_scrapes_what_the_jobs_did() {
    let sys = TestSystem::start();
    let server = sys.server_addr().to_string();
    let controller = sys.controller_status_addr().unwrap();
    let prom = prometheus::start(&[
        Target::new("server", &server),
        Target::new("controller", &controller),
    ])
    .unwrap();

    let passing = sys.submit_async(&copy_fixture("passing"));
    let failing = sys.submit_async(&copy_fixture("failing"));
    let slow = sys.submit_async(&slow_project(120));
    sys.wait_for_job(slow, "running", JOB_DEADLINE, |j| {
        j.status == JobStatus::Running
    });
    // Scraped while a job runs: the controller counts it running.
    prom.wait_for_scrape_after("controller", SystemTime::now(), SCRAPE_DEADLINE)
        .unwrap();
    let running = prom
        .value(r#"ci_jobs{job="controller",status="running"}"#)
        .unwrap();
    assert!(running >= Some(1.0), "{running:?}");
    sys.cancel(slow).unwrap();
    for id in [passing, failing, slow] {
        sys.wait_for_job_end(id);
    }
    // The controller counts a job's end before it removes its container.
    sys.assert_settled();
    let ended = SystemTime::now();
    for job in ["server", "controller"] {
        prom.wait_for_scrape_after(job, ended, SCRAPE_DEADLINE)
            .unwrap_or_else(|e| panic!("{e}\nPrometheus's log:\n{}", prom.log()));
    }

    let finished: std::collections::BTreeMap<String, f64> = prom
        .query(r#"ci_jobs_finished_total{job="controller"}"#)
        .unwrap()
        .into_iter()
        .map(|s| (s.label("outcome").unwrap_or_default().to_string(), s.value))
        .collect();
    let expected: std::collections::BTreeMap<String, f64> = [
        ("cancelled".to_string(), 1.0),
        ("failed".to_string(), 1.0),
        ("passed".to_string(), 1.0),
    ]
    .into();
    assert_eq!(finished, expected);
    // Every one of the three jobs started: the histogram counted each wait.
    assert_eq!(
        prom.value("ci_jobs_queue_wait_seconds_count").unwrap(),
        Some(3.0)
    );
    assert_eq!(
        prom.value("ci_jobs_duration_seconds_count").unwrap(),
        Some(3.0)
    );
    // An idle controller starts a job well within the largest bucket.
    assert_eq!(
        prom.value(r#"ci_jobs_queue_wait_seconds_bucket{le="1800.0"}"#)
            .unwrap(),
        Some(3.0)
    );
    assert_eq!(
        prom.value(r#"ci_jobs{status="completed"}"#).unwrap(),
        Some(2.0)
    );
    assert_eq!(
        prom.value(r#"ci_jobs{status="cancelled"}"#).unwrap(),
        Some(1.0)
    );
    assert_eq!(
        prom.value(r#"ci_jobs{status="queued"}"#).unwrap(),
        Some(0.0)
    );
    assert_eq!(prom.value("ci_controller_leader").unwrap(), Some(1.0));
    let stored = prom
        .value("ci_jobs_output_stored_bytes_total")
        .unwrap()
        .unwrap_or_default();
    assert!(stored > 0.0, "the jobs printed something");

    // The server's side, by route template.
    assert_eq!(
        prom.value(
            r#"sum(ci_http_requests_total{job="server",route="/submit-async",status="200"})"#
        )
        .unwrap(),
        Some(3.0)
    );
    let routes = prom
        .query(r#"count by (route) (ci_http_requests_total{job="server"})"#)
        .unwrap();
    for sample in &routes {
        let route = sample.label("route").unwrap_or_default();
        for id in [passing, failing, slow] {
            assert!(
                !route.contains(&id.to_string()),
                "a job id as a label: {route}"
            );
        }
    }
    assert!(
        routes
            .iter()
            .any(|s| s.label("route") == Some("/jobs/{id}")),
        "{routes:?}"
    );
}

#[test]
fn json_logs_are_json_line_by_line_and_never_hold_the_key() {
    let sys = TestSystem::options()
        .server_env("CI_LOG_FORMAT", "json")
        .controller_env("CI_LOG_FORMAT", "json")
        .start();
    let id = sys.submit_async(&copy_fixture("passing"));
    sys.wait_for_job_end(id);
    sys.assert_settled();

    let logs = sys.service_logs();
    let mut access_lines = Vec::new();
    for log in &logs {
        assert!(
            !log.text.contains(&sys.user.api_key),
            "{} logged the key",
            log.name
        );
        for line in log.text.lines().filter(|l| !l.trim().is_empty()) {
            let json: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", log.name));
            if log.name == "server" && json["message"] == "request" && json["route"].is_string() {
                access_lines.push(json);
            }
        }
    }
    let submit = access_lines
        .iter()
        .find(|l| l["route"] == "/submit-async")
        .unwrap_or_else(|| panic!("no access line for the submit: {access_lines:#?}"));
    assert_eq!(submit["status"], 200, "{submit}");
    assert_eq!(submit["method"], "POST", "{submit}");
    assert_eq!(submit["path"], "/submit-async", "{submit}");
    assert_eq!(submit["user_id"], sys.user.id.to_string(), "{submit}");
    assert!(submit["latency_ms"].as_f64().is_some(), "{submit}");
    let request_id = submit["request_id"].as_str().unwrap_or_default();
    assert!(request_id.parse::<uuid::Uuid>().is_ok(), "{submit}");
    // The controller's lines about the job carry the submission's request id.
    let controller = logs.iter().find(|l| l.name == "controller").unwrap();
    let job_lines: Vec<serde_json::Value> = controller
        .text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["span"]["job_id"] == id.to_string())
        .collect();
    assert!(
        !job_lines.is_empty(),
        "no controller line in the job's span"
    );
    for line in &job_lines {
        assert_eq!(line["span"]["request_id"], request_id, "{line}");
    }
    let job_lines = access_lines
        .iter()
        .filter(|l| l["route"] == "/jobs/{id}")
        .count();
    assert!(job_lines > 0, "the waits read the job: {access_lines:#?}");
}

/// The environment cache as Prometheus sees it: a job with a requirement
/// misses and builds, the next with the same requirement hits. One tiny
/// package from the real PyPI (the only network use of this file).
#[test]
fn prometheus_counts_the_environment_cache() {
    let sys = TestSystem::options().job_network("bridge").start();
    let controller = sys.controller_status_addr().unwrap();
    let prom = prometheus::start(&[Target::new("controller", &controller)]).unwrap();
    let project = copy_fixture("no-requirements");
    project.write("requirements.txt", "iniconfig\n");
    project.write(
        "test_iniconfig.py",
        "import iniconfig\n\ndef test_iniconfig_is_installed():\n    assert iniconfig.IniConfig\n",
    );
    for _ in 0..2 {
        run_within(
            sys.ci()
                .args(["submit", "test"])
                .current_dir(project.path()),
            DOWNLOAD_DEADLINE,
        )
        .assert_code(0);
    }
    let ended = SystemTime::now();
    prom.wait_for_scrape_after("controller", ended, SCRAPE_DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\nPrometheus's log:\n{}", prom.log()));

    let value = |series: &str| prom.value(series).unwrap();
    assert_eq!(value("ci_env_cache_misses_total"), Some(1.0));
    assert_eq!(value("ci_env_cache_hits_total"), Some(1.0));
    assert_eq!(
        value(r#"ci_env_cache_builds_total{result="succeeded"}"#),
        Some(1.0)
    );
    assert_eq!(value(r#"ci_env_cache_builds_total{result="failed"}"#), None);
    assert_eq!(
        value("sum(ci_env_cache_evictions_total)"),
        None,
        "nothing evicted"
    );
}
