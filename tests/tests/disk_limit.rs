//! A job's disk use is bounded (issue 16): with `CI_JOB_DISK_LIMIT=64MiB`, a
//! job that writes 200 MiB, into its workspace volume, into a writable root
//! or into its user's pip cache, is ended with the reason long before its own
//! time limit, and a job that writes 10 MiB passes. On the real engine: overlay2 on extfs here,
//! which has no storage quota, so the controller's measurements alone end it.

use ci_common::JobStatus;
use ci_testkit::{copy_fixture, Options, Project, TestSystem};

const REASON: &str = "Job used more than 64.0 MiB of disk (limit CI_JOB_DISK_LIMIT)";

/// The jobs' own time limit: far beyond the test's deadline for a job's
/// end, so only the disk bound can end the writing jobs in time.
const JOB_TIMEOUT_SECS: &str = "900";

/// A project whose one test writes `mib` MiB into `folder` and then waits
/// `wait_secs`, so that the controller measures it while it runs.
fn writing_project(folder: &str, mib: u32, wait_secs: u32) -> Project {
    let project = copy_fixture("no-requirements");
    project.write(
        "test_disk.py",
        &format!(
            "import os\nimport pathlib\nimport time\n\n\
def test_writes():\n    \
    target = pathlib.Path('{folder}') / 'filler.bin'\n    \
    chunk = b'\\0' * (1 << 20)\n    \
    with open(target, 'wb') as f:\n        \
        for _ in range({mib}):\n            \
            f.write(chunk)\n        \
        os.fsync(f.fileno())\n    \
    time.sleep({wait_secs})\n"
        ),
    );
    project
}

fn bounded(options: Options) -> TestSystem {
    options
        // The writing job and the small one run side by side.
        .controller_env("CI_MAX_CONCURRENT_JOBS", "2")
        .controller_env("CI_JOB_DISK_LIMIT", "64MiB")
        .controller_env("CI_JOB_TIMEOUT", JOB_TIMEOUT_SECS)
        .start()
}

/// Ends unsuccessfully, with the disk reason as its reason and in its output.
fn assert_ended_for_its_disk(sys: &TestSystem, job: ci_common::JobId) {
    let ended = sys.wait_for_job_end(job);
    assert_eq!(ended.status, JobStatus::Completed, "{ended:?}");
    assert_eq!(ended.success, Some(false), "{ended:?}");
    assert_eq!(ended.reason.as_deref(), Some(REASON), "{ended:?}");
    let output = sys.stored_output(job).unwrap_or_default();
    assert!(output.contains(REASON), "the reason is shown:\n{output}");
}

#[test]
fn a_job_filling_its_workspace_is_ended_and_one_writing_little_passes() {
    let sys = bounded(TestSystem::options());
    let filling = sys.submit_async(&writing_project(".", 200, 600));
    // Waits long enough for several measurements (every 5 s) to see it.
    let small = sys.submit_async(&writing_project(".", 10, 15));
    assert_ended_for_its_disk(&sys, filling);
    let passed = sys.wait_for_job_end(small);
    assert_eq!(passed.success, Some(true), "{passed:?}");
    assert_eq!(passed.reason, None, "{passed:?}");
    sys.assert_settled();
}

#[test]
fn a_job_filling_a_writable_root_is_ended() {
    // Without the read-only root, /tmp and the workspace are in the
    // container's writable layer.
    let sys = bounded(TestSystem::options().controller_env("CI_JOB_READ_ONLY_ROOTFS", "false"));
    let filling = sys.submit_async(&writing_project("/tmp", 200, 600));
    assert_ended_for_its_disk(&sys, filling);
    sys.assert_settled();
}

#[test]
fn a_job_filling_its_pip_cache_is_ended_and_its_users_next_job_finds_it_empty() {
    let sys = bounded(TestSystem::options());
    // Requirements (with nothing to download) mount the user's pip cache.
    let filling = writing_project("/home/runner/.cache/pip", 200, 600);
    filling.write("requirements.txt", "# nothing to install\n");
    let filling = sys.submit_async(&filling);
    assert_ended_for_its_disk(&sys, filling);

    // Submitted once the first has ended: the cache was emptied before.
    let next = copy_fixture("no-requirements");
    next.write("requirements.txt", "# nothing to install\n");
    next.write(
        "test_cache.py",
        "import pathlib\n\n\
def test_the_cache_was_emptied():\n    \
    assert not (pathlib.Path.home() / '.cache' / 'pip' / 'filler.bin').exists()\n",
    );
    let next = sys.submit_async(&next);
    let passed = sys.wait_for_job_end(next);
    assert_eq!(
        passed.success,
        Some(true),
        "{passed:?}\n{:?}",
        sys.stored_output(next)
    );
    sys.assert_settled();
}
