//! What one user's job leaves behind never reaches another user's job: the
//! writable pip cache is per user.

use ci_testkit::{copy_fixture, run_within, Project, TestSystem, JOB_DEADLINE};

/// Where a job could plant something for the next `pip install`.
const PLANTED: &str = "import pathlib\n\
PLANTED = pathlib.Path.home() / '.cache' / 'pip' / 'planted-wheel'\n";

/// A project that installs requirements (so pip's cache is mounted) and whose
/// one test is `test_body`.
fn cache_project(test_body: &str) -> Project {
    let project = copy_fixture("no-requirements");
    // Nothing to download: pip runs, and needs no network.
    project.write("requirements.txt", "# nothing to install\n");
    project.write("test_cache.py", &format!("{PLANTED}\n{test_body}"));
    project
}

#[test]
fn a_users_pip_cache_is_not_seen_by_another_users_jobs() {
    let mut sys = TestSystem::start();
    let other = sys.create_user("Other");

    let plant = cache_project(
        "def test_plant():\n    PLANTED.write_text('trust me')\n    assert PLANTED.exists()\n",
    );
    let out = sys.submit_sync(&plant);
    out.assert_code(0);

    let absent = cache_project("def test_absent():\n    assert not PLANTED.exists()\n");
    let out = run_within(
        sys.ci_as(&other.api_key)
            .args(["submit", "test"])
            .current_dir(absent.path()),
        JOB_DEADLINE,
    );
    out.assert_code(0);
    assert!(
        out.stdout.contains("::test_absent PASSED"),
        "another user's job saw the planted file\n{out}"
    );

    // The cache does persist for its own user.
    let present =
        cache_project("def test_present():\n    assert PLANTED.read_text() == 'trust me'\n");
    let out = sys.submit_sync(&present);
    out.assert_code(0);
    assert!(out.stdout.contains("::test_present PASSED"), "{out}");
    sys.assert_settled();
}
