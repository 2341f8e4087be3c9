//! How a job is asked to run, from the command line: `--python`, the
//! project's name, and pytest arguments after `--`.

use ci_common::PythonVersion;
use ci_testkit::{copy_fixture, run_within, TestSystem, JOB_DEADLINE};

#[test]
fn python_by_flag_project_by_name_and_pytest_arguments_as_argv() {
    let sys = TestSystem::start();
    let project = copy_fixture("no-requirements");
    project.write(
        "pyproject.toml",
        "[project]\nname = \"greetings\"\nversion = \"0\"\nrequires-python = \">=3.11\"\n",
    );
    project.write(
        "test_which.py",
        "import sys\n\n\
         def test_python_313():\n    assert sys.version_info[:2] == (3, 13)\n\n\
         def test_not_selected():\n    raise AssertionError('deselected by -k')\n",
    );

    // `-k` gets one argument with spaces: argv, never words for a shell to split.
    let out = run_within(
        sys.ci()
            .args([
                "submit",
                "test",
                "--python",
                "3.13",
                "--",
                "-k",
                "python_313 or greet",
            ])
            .current_dir(project.path()),
        JOB_DEADLINE,
    );
    out.assert_code(0);
    assert!(out.stdout.contains("::test_python_313 PASSED"), "{out}");
    assert!(!out.stdout.contains("test_not_selected"), "{out}");
    assert!(out.stdout.contains("deselected"), "{out}");

    let id = out.job_id().unwrap_or_else(|| panic!("no job id\n{out}"));
    let job = sys.stored_job(id).expect("read").expect("stored");
    let v313: PythonVersion = "3.13".parse().expect("version");
    assert_eq!((job.options.python, job.python), (Some(v313), Some(v313)));
    assert_eq!(job.options.project.as_deref(), Some("greetings"));
    let summary = sys.job(id).expect("summary");
    assert_eq!(summary.python.as_deref(), Some("3.13"));
    assert_eq!(summary.project.as_deref(), Some("greetings"));

    // --project overrides the name; the folder's name stands in for a missing one.
    let out = run_within(
        sys.ci()
            .args(["submit", "test", "--async", "--project", "renamed"])
            .current_dir(project.path()),
        JOB_DEADLINE,
    );
    out.assert_code(0);
    let renamed = out.submitted_job_id().expect("a job id");
    assert_eq!(
        sys.wait_for_job_end(renamed).project.as_deref(),
        Some("renamed")
    );
    sys.assert_settled();
}

#[test]
fn a_python_no_image_offers_by_flag_ends_the_job_with_the_offer() {
    let sys = TestSystem::start();
    let project = copy_fixture("no-requirements");
    let out = run_within(
        sys.ci()
            .args(["submit", "test", "--python", "2.7"])
            .current_dir(project.path()),
        JOB_DEADLINE,
    );
    out.assert_code(1);
    assert!(
        out.stdout
            .contains("Python 2.7 is not offered by this installation; it offers: "),
        "{out}"
    );
    sys.assert_settled();
}
