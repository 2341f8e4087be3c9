//! Jobs run on the Python they ask for, among the runner images this engine
//! offers (labelled `ci.python` by `scripts/runner-image.sh`), and every
//! runner image gives a project what a fresh official Python image would.

use std::process::Command;
use std::time::Duration;

use ci_common::{JobStatus, PythonVersion};
use ci_testkit::{copy_fixture, run_within, Project, TestSystem, JOB_DEADLINE};

/// The Pythons on offer, as the engine's image labels say (the controller
/// reads the same labels).
fn offered() -> Vec<PythonVersion> {
    let ids = Command::new("docker")
        .args(["image", "ls", "-q", "--filter", "label=ci.python"])
        .output()
        .expect("docker image ls");
    let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(!ids.is_empty(), "scripts/test builds runner images");
    let out = Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{index .Config.Labels \"ci.python\"}}",
        ])
        .args(&ids)
        .output()
        .expect("docker image inspect");
    let mut versions: Vec<PythonVersion> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    versions.sort();
    versions.dedup();
    versions
}

/// A project asking for `requires_python` whose test checks which Python runs.
fn asking(requires_python: &str, expected: Option<PythonVersion>) -> Project {
    let project = copy_fixture("no-requirements");
    project.write(
        "pyproject.toml",
        &format!("[project]\nname = \"asks\"\nversion = \"0\"\nrequires-python = \"{requires_python}\"\n"),
    );
    if let Some(v) = expected {
        project.write(
            "test_python.py",
            &format!(
                "import sys\n\ndef test_the_python_asked_for():\n    \
                 assert sys.version_info[:2] == ({}, {})\n",
                v.major, v.minor
            ),
        );
    }
    project
}

#[test]
fn requires_python_picks_the_newest_python_that_satisfies_it() {
    let offered = offered();
    let newest = *offered.last().expect("scripts/test builds runner images");
    assert!(
        offered.len() >= 2,
        "scripts/test builds at least two runner images: {offered:?}"
    );
    let sys = TestSystem::start();
    for (spec, expected) in [
        (format!(">={}", offered[1]), newest),
        (format!("=={}.*", offered[0]), offered[0]),
    ] {
        let out = sys.submit_sync(&asking(&spec, Some(expected)));
        out.assert_code(0);
        assert!(
            out.stdout.contains("::test_the_python_asked_for PASSED"),
            "{spec}\n{out}"
        );
        let id = out.job_id().unwrap_or_else(|| panic!("no job id\n{out}"));
        let job = sys.stored_job(id).expect("read").expect("stored");
        assert_eq!(job.python, Some(expected), "{spec}");
        assert!(
            job.image
                .as_deref()
                .is_some_and(|i| i.contains(&expected.to_string())),
            "{job:?}"
        );
    }
    sys.assert_settled();
}

#[test]
fn a_python_no_image_offers_ends_the_job_at_once_naming_those_on_offer() {
    let sys = TestSystem::start();
    let out = sys.submit_sync(&asking(">=9.0", None));

    out.assert_code(1);
    let offered: Vec<String> = offered().iter().map(ToString::to_string).collect();
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(last.contains("requires-python \">=9.0\""), "{out}");
    assert!(
        last.contains(&format!("it offers: {}", offered.join(", "))),
        "{out}"
    );
    let id = out.job_id().unwrap_or_else(|| panic!("no job id\n{out}"));
    let job = sys.stored_job(id).expect("read").expect("stored");
    assert_eq!(
        (job.status, job.success, job.started_at),
        (JobStatus::Completed, Some(false), None)
    );
    sys.assert_settled();
}

#[test]
fn every_runner_image_has_time_zones_a_compiler_headers_git_and_utf8() {
    let sys = TestSystem::start();
    for python in offered() {
        let project = copy_fixture("image-essentials");
        project.write(
            "pyproject.toml",
            &format!("[project]\nname = \"essentials\"\nversion = \"0\"\nrequires-python = \"=={python}.*\"\n"),
        );
        let out = run_within(
            sys.ci()
                .args(["submit", "test"])
                .current_dir(project.path()),
            JOB_DEADLINE,
        );
        out.assert_code(0);
        assert!(out.stdout.contains("4 passed"), "Python {python}\n{out}");
    }
    sys.assert_settled();
}

/// The current pytest release on PyPI, as pip on this machine sees it.
fn current_pytest() -> String {
    let out = Command::new("python3")
        .args(["-m", "pip", "index", "versions", "pytest"])
        .output()
        .expect("pip index");
    let text = String::from_utf8_lossy(&out.stdout);
    // "pytest (9.2.0)"
    text.lines()
        .next()
        .and_then(|l| {
            l.split_once('(')?
                .1
                .split_once(')')
                .map(|(v, _)| v.to_string())
        })
        .unwrap_or_else(|| panic!("cannot read pip index's answer: {text}"))
}

#[test]
fn an_unpinned_pytest_requirement_gets_the_current_release() {
    let sys = TestSystem::options().job_network("bridge").start();
    let project = copy_fixture("no-requirements");
    project.write("requirements.txt", "pytest\n");

    let out = run_within(
        sys.ci()
            .args(["submit", "test"])
            .current_dir(project.path()),
        Duration::from_secs(300),
    );

    out.assert_code(0);
    let current = current_pytest();
    assert!(
        out.stdout.contains("Successfully installed")
            && out.stdout.contains(&format!("pytest-{current}")),
        "pytest {current} is installed into the job's own environment\n{out}"
    );
    assert!(
        !out.stdout.contains("Requirement already satisfied: pytest"),
        "{out}"
    );
    sys.assert_settled();
}
