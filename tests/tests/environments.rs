//! Dependency environments on the real engine, installed from the real PyPI
//! over the bridge network: a job's requirements are installed once, in a
//! preparation container, committed as an image that later jobs start from.
//! What was built is counted by the engine's labels and events, never read
//! from log wording.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ci_common::{JobId, JobStatus};
use ci_testkit::{copy_fixture, run_within, wait_for, CiOutput, Project, TestSystem};

/// Downloads on a slow day.
const DOWNLOAD_DEADLINE: Duration = Duration::from_secs(300);
/// How long the engine gets to show what the controller did.
const ENGINE_DEADLINE: Duration = Duration::from_secs(120);
const LABEL_INSTALLATION: &str = "ci.installation";
const LABEL_KEY: &str = "ci.environment.key";
const LABEL_PREPARATION: &str = "ci.environment.preparation";
const LABEL_JOB: &str = "ci.job-id";

fn bridge() -> TestSystem {
    TestSystem::options().job_network("bridge").start()
}

/// A project whose test needs `attrs`, with `requirements`.
fn attrs_project(requirements: &str) -> Project {
    let project = copy_fixture("no-requirements");
    project.write("requirements.txt", requirements);
    project.write(
        "test_attrs.py",
        "import attrs\n\ndef test_attrs_is_installed():\n    assert attrs.__version__\n",
    );
    project
}

fn docker_lines(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// The installation's environment images, by id.
fn environments(sys: &TestSystem) -> Vec<String> {
    let mut ids = docker_lines(&[
        "image",
        "ls",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label={LABEL_INSTALLATION}={}", sys.prefix),
        "--filter",
        &format!("label={LABEL_KEY}"),
    ]);
    ids.sort();
    ids.dedup();
    ids
}

/// Whether a container's labels (`<job id>|<preparation key>`, as the
/// formats below print them) are a preparation's: a job's container
/// inherits the label from the environment image it runs from, and has a job.
fn is_preparation(labels: &str) -> bool {
    let mut fields = labels.split('|');
    matches!((fields.next(), fields.next()), (Some(""), Some(key)) if !key.is_empty())
}

/// The installation's preparation containers, by id.
fn preparations(sys: &TestSystem) -> Vec<String> {
    docker_lines(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &format!("label={LABEL_INSTALLATION}={}", sys.prefix),
        "--format",
        &format!(
            "{{{{.ID}}}} {{{{.Label \"{LABEL_JOB}\"}}}}|{{{{.Label \"{LABEL_PREPARATION}\"}}}}"
        ),
    ])
    .into_iter()
    .filter_map(|line| {
        let (id, labels) = line.split_once(' ')?;
        is_preparation(labels).then(|| id.to_string())
    })
    .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// The containers the engine creates for an installation, as its event
/// stream tells them live (the engine keeps only its last few hundred
/// events for later questions, which a busy engine overwrites in seconds).
struct Creations {
    child: std::process::Child,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Creations {
    /// From a second ago on, so nothing created as it subscribes is missed.
    fn follow(sys: &TestSystem) -> Creations {
        let mut child = Command::new("docker")
            .args(["events", "--since"])
            .arg(format!("{:.3}", unix_now() - 1.0))
            .args(["--filter", "type=container", "--filter", "event=create"])
            .arg("--filter")
            .arg(format!("label={LABEL_INSTALLATION}={}", sys.prefix))
            .arg("--format")
            .arg(format!(
                "{{{{index .Actor.Attributes \"{LABEL_JOB}\"}}}}|{{{{index .Actor.Attributes \"{LABEL_PREPARATION}\"}}}}|{{{{.Actor.Attributes.image}}}}"
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker events");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("its output");
        let lines = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Creations { child, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The preparation containers created, once the engine has told of
    /// `jobs` job containers: events come in order, and every preparation
    /// of those jobs was created before their containers.
    fn preparations_before_jobs(&self, jobs: usize) -> usize {
        wait_for(
            "the job containers' creation events",
            ENGINE_DEADLINE,
            || self.seen().iter().filter(|l| !l.starts_with('|')).count() >= jobs,
        );
        self.seen().iter().filter(|l| is_preparation(l)).count()
    }

    /// The images the job containers were created from, in order, once the
    /// engine has told of `jobs` of them.
    fn job_images(&self, jobs: usize) -> Vec<String> {
        self.preparations_before_jobs(jobs);
        self.seen()
            .iter()
            .filter(|l| !l.starts_with('|'))
            .filter_map(|l| l.rsplit('|').next())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Creations {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `cond` holds of the engine, failing after [`ENGINE_DEADLINE`].
fn engine_until(what: &str, cond: impl FnMut() -> bool) {
    wait_for(what, ENGINE_DEADLINE, cond);
}

/// Waits for a job that installs from PyPI to end.
fn job_end(sys: &TestSystem, job: JobId) -> ci_common::api::JobSummary {
    sys.wait_for_job(job, "ended", DOWNLOAD_DEADLINE, |j| j.status.is_terminal())
}

fn submit(sys: &TestSystem, project: &Project, args: &[&str]) -> CiOutput {
    run_within(
        sys.ci()
            .args(["submit", "test"])
            .args(args)
            .current_dir(project.path()),
        DOWNLOAD_DEADLINE,
    )
}

fn submit_as(sys: &TestSystem, key: &str, project: &Project) -> CiOutput {
    run_within(
        sys.ci_as(key)
            .args(["submit", "test"])
            .current_dir(project.path()),
        DOWNLOAD_DEADLINE,
    )
}

#[test]
fn a_src_layout_project_installs_its_requirements_once_and_itself_in_each_job() {
    let sys = bridge();
    let project = copy_fixture("src-layout-setuptools");
    let creations = Creations::follow(&sys);

    let first = submit(&sys, &project, &[]);
    first.assert_code(0);
    let built = environments(&sys);
    assert_eq!(built.len(), 1);
    // Removed once its job has ended, off the job's path.
    engine_until("the preparation to be removed", || {
        preparations(&sys).is_empty()
    });
    // No installation takes an environment for a runner image of its Python.
    let python = docker_lines(&[
        "image",
        "inspect",
        "--format",
        "python={{index .Config.Labels \"ci.python\"}}",
        &built[0],
    ]);
    assert_eq!(python, ["python="]);

    // A hit: no preparation, one line saying which environment, and the
    // project still installed (from the upload) and tested.
    let second = submit(&sys, &project, &[]);
    second.assert_code(0);
    let said: Vec<&str> = second
        .stdout
        .lines()
        .filter(|l| l.starts_with("[ci] "))
        .collect();
    assert_eq!(said.len(), 1, "{second}");
    assert!(said[0].contains("built "), "{second}");
    assert!(
        second
            .stdout
            .contains("::test_the_package_is_installed_not_imported_from_the_tree PASSED"),
        "{second}"
    );
    assert_eq!(creations.preparations_before_jobs(2), 1);
    assert_eq!(environments(&sys), built, "the same image");

    // --fresh-env builds it again; the older build goes.
    let fresh = submit(&sys, &project, &["--fresh-env"]);
    fresh.assert_code(0);
    assert_eq!(creations.preparations_before_jobs(3), 2);
    engine_until("the older build to be evicted", || {
        let now = environments(&sys);
        now.len() == 1 && now != built
    });
    sys.assert_settled();
}

#[test]
fn two_jobs_with_one_new_key_build_it_once() {
    // Both run at once, whatever the machine's CPU count: the second waits
    // for the first one's build.
    let sys = TestSystem::options()
        .job_network("bridge")
        .controller_env("CI_MAX_CONCURRENT_JOBS", "2")
        .start();
    let creations = Creations::follow(&sys);
    let project = attrs_project("attrs\nhypothesis\n");
    let jobs: Vec<JobId> = (0..2).map(|_| sys.submit_async(&project)).collect();
    for job in &jobs {
        let ended = job_end(&sys, *job);
        assert_eq!(
            (ended.status, ended.success),
            (JobStatus::Completed, Some(true)),
            "{}",
            sys.stored_output(*job).unwrap_or_default()
        );
    }
    assert_eq!(creations.preparations_before_jobs(2), 1, "one build");
    assert_eq!(environments(&sys).len(), 1);
    sys.assert_settled();
}

#[test]
fn a_failing_install_ends_the_job_and_stores_nothing() {
    let sys = bridge();
    let project = attrs_project("attrs\nci-no-such-package-anywhere==1.0\n");
    let out = submit(&sys, &project, &[]);
    out.assert_code(1);
    assert!(
        out.stdout.contains("ci-no-such-package-anywhere"),
        "pip's own output\n{out}"
    );
    let id = out.job_id().expect("a job id");
    let job = sys.job(id).expect("the job");
    assert_eq!(job.success, Some(false));
    assert!(environments(&sys).is_empty(), "nothing stored");
    sys.assert_settled();
    assert!(preparations(&sys).is_empty());
}

#[test]
fn users_share_an_environment_only_when_its_requirements_name_nothing_private() {
    let mut sys = bridge();
    let other = sys.create_user("Other");
    let creations = Creations::follow(&sys);

    let public = attrs_project("attrs\n");
    submit(&sys, &public, &[]).assert_code(0);
    let theirs = submit_as(&sys, &other.api_key, &public);
    theirs.assert_code(0);
    assert_eq!(creations.preparations_before_jobs(2), 1, "shared");

    // A local folder of wheels is the user's own: the key includes the user.
    let private = attrs_project("--find-links ./wheels\nattrs\n");
    submit(&sys, &private, &[]).assert_code(0);
    submit_as(&sys, &other.api_key, &private).assert_code(0);
    assert_eq!(
        creations.preparations_before_jobs(4),
        3,
        "one build per user"
    );
    assert_eq!(environments(&sys).len(), 3);
    sys.assert_settled();
}

#[test]
fn the_least_recently_used_environment_is_evicted_when_the_cache_is_full() {
    // Room for none: each build evicts what no job uses.
    let sys = TestSystem::options()
        .job_network("bridge")
        .controller_env("CI_ENV_CACHE_BYTES", "1")
        .start();
    let creations = Creations::follow(&sys);
    submit(&sys, &attrs_project("attrs\n"), &[]).assert_code(0);
    // Taken from the job's container: with no room, the environment may be
    // evicted as soon as its job has ended.
    let first = creations.job_images(1)[0].clone();
    assert!(first.starts_with("sha256:"), "{first}");

    submit(&sys, &attrs_project("attrs\niniconfig\n"), &[]).assert_code(0);
    engine_until("the first environment to be evicted", || {
        !environments(&sys).contains(&first)
    });
    sys.assert_settled();
}

#[test]
fn an_environment_older_than_the_age_limit_is_built_again() {
    let sys = TestSystem::options()
        .job_network("bridge")
        .controller_env("CI_ENV_MAX_AGE", "1s")
        .start();
    let project = attrs_project("attrs\n");
    let creations = Creations::follow(&sys);
    submit(&sys, &project, &[]).assert_code(0);
    // Taken from the job's container: the environment may be evicted as
    // soon as its job has ended, being past its age already.
    let first = creations.job_images(1)[0].clone();
    assert!(first.starts_with("sha256:"), "{first}");
    // The age limit is the condition: let the clock pass it.
    std::thread::sleep(Duration::from_millis(1500));

    let again = submit(&sys, &project, &[]);
    again.assert_code(0);
    assert_eq!(creations.preparations_before_jobs(2), 2);
    assert_ne!(creations.job_images(2)[1], first, "built again");
    engine_until("the expired environment to be evicted", || {
        !environments(&sys).contains(&first)
    });
    sys.assert_settled();
}

#[test]
fn a_controller_killed_during_a_preparation_leaves_no_half_environment() {
    let mut sys = bridge();
    // Enough to install that pip is still at it when the controller dies.
    let project = attrs_project("attrs\nsphinx\nhypothesis\n");
    let job = sys.submit_async(&project);
    engine_until("a preparation container", || !preparations(&sys).is_empty());
    let left = preparations(&sys);
    sys.kill_controller();
    assert!(environments(&sys).is_empty(), "nothing was committed");

    sys.restart_controller();
    engine_until("the half preparation to be removed", || {
        !preparations(&sys).contains(&left[0])
    });
    let ended = job_end(&sys, job);
    assert_eq!(
        (ended.status, ended.success),
        (JobStatus::Completed, Some(true)),
        "{}",
        sys.stored_output(job).unwrap_or_default()
    );
    assert_eq!(environments(&sys).len(), 1, "built again, once");
    sys.assert_settled();
}

/// pytest in a job sees no terminal; the job's environment asks it for its
/// colours (`PY_COLORS=1`, kept by `ci` and the page on a terminal) and a
/// width of 120 columns instead of 80.
#[test]
fn pytest_prints_its_colours_and_uses_120_columns() {
    let sys = TestSystem::start();
    let out = sys.submit_sync(&copy_fixture("no-requirements"));
    out.assert_code(0);
    let id = out.job_id().expect("a job id");
    let stored = sys.stored_output(id).expect("the output");
    assert!(stored.contains("\u{1b}[32m"), "pytest's green\n{stored}");
    let piped = sys.stored_output_piped(id).expect("the output");
    let header = piped
        .lines()
        .find(|l| l.contains(" test session starts "))
        .unwrap_or_else(|| panic!("no header line\n{piped}"));
    assert_eq!(header.chars().count(), 120, "{header:?}");
    sys.assert_settled();
}
