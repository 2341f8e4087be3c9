//! A job on Docker's bridge network installs a pinned requirement from PyPI
//! for real: the job image's own pytest is the current release, the fixture pins 7.4.3
//! and its test checks which one runs.

use std::time::Duration;

use ci_common::JobStatus;
use ci_testkit::{copy_fixture, run_within, TestSystem};

/// A download on a slow day.
const DOWNLOAD_DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn a_pinned_requirement_is_downloaded_and_used() {
    let sys = TestSystem::options().job_network("bridge").start();
    let project = copy_fixture("pinned-requirement");

    let out = run_within(
        sys.ci()
            .args(["submit", "test"])
            .current_dir(project.path()),
        DOWNLOAD_DEADLINE,
    );

    out.assert_code(0);
    // pip's own report: fetched from PyPI (the cache volume is new), installed.
    assert!(
        out.stdout.contains("Downloading pytest-7.4.3"),
        "a real download\n{out}"
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("Successfully installed") && l.contains(" pytest-7.4.3")),
        "{out}"
    );
    assert!(
        out.stdout.contains("pytest-7.4.3"),
        "pytest 7.4.3 runs\n{out}"
    );
    assert!(
        out.stdout
            .contains("::test_the_pinned_pytest_is_the_one_running PASSED"),
        "{out}"
    );
    let id = out
        .job_id()
        .unwrap_or_else(|| panic!("no `Job ID:` line\n{out}"));
    let job = sys
        .job(id)
        .unwrap_or_else(|e| panic!("cannot read job {id}: {e:#}"));
    assert_eq!(
        (job.status, job.success),
        (JobStatus::Completed, Some(true))
    );
    sys.assert_settled();
}

/// `pip install .` builds a wheel of the project, which zips its files: that
/// needs the files' own times (zip refuses those before 1980). The build
/// backends come from PyPI, so the bridge network.
fn a_project_that_installs_itself_passes(fixture: &str) {
    let sys = TestSystem::options().job_network("bridge").start();
    let project = copy_fixture(fixture);

    let out = run_within(
        sys.ci()
            .args(["submit", "test"])
            .current_dir(project.path()),
        DOWNLOAD_DEADLINE,
    );

    out.assert_code(0);
    assert!(
        out.stdout
            .contains("::test_the_package_is_installed_not_imported_from_the_tree PASSED"),
        "{out}"
    );
    assert!(out.stdout.contains("2 passed"), "{out}");
    assert!(!out.stdout.contains("before 1980"), "{out}");
    sys.assert_settled();
}

#[test]
fn a_src_layout_setuptools_project_installs_itself() {
    a_project_that_installs_itself_passes("src-layout-setuptools");
}

#[test]
fn a_src_layout_hatchling_project_installs_itself() {
    a_project_that_installs_itself_passes("src-layout-hatchling");
}

/// flit builds its wheel from the files' own times (no clamping), so this one
/// fails with `ZIP does not support timestamps before 1980` when they are lost.
#[test]
fn a_src_layout_flit_project_installs_itself() {
    a_project_that_installs_itself_passes("src-layout-flit");
}
