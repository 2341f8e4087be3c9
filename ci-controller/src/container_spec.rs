//! Everything the engine is asked for when a job's container is created, as
//! one pure function of the job, the configuration and facts about the
//! project.
//!
//! The runtime maps a [`ContainerSpec`] to the engine's API and does nothing
//! of its own; the benchmark's by-hand baseline maps the same spec to
//! `docker create` arguments. Both destructure it whole, so a field added here
//! fails to compile until both handle it: the baseline cannot drift from what
//! the controller really runs.

use std::collections::BTreeMap;

use ci_common::Job;

use crate::config::{ControllerConfig, JOB_SCRIPT, UNPACK_FROM_STDIN};
use crate::environment::LocalEntry;
use crate::junit_report::REPORT_DIR;
use crate::pythons::{LABEL_PYTHON, LABEL_PYTHON_VERSION};
use crate::runtime::{LABEL_INSTALLATION, LABEL_JOB, LABEL_PREPARATION};

/// The runner image's unprivileged user, who owns the workspace.
pub const JOB_UID: u64 = crate::workspace::WORKSPACE_UID;
/// That user's home folder in the runner image.
pub const JOB_HOME: &str = "/home/runner";
/// Where the project is unpacked and the job runs.
pub const WORKSPACE_DIR: &str = "/workspace";
/// The engine's `local` log format (length-prefixed protobuf) costs it less to
/// write, and the log pump less to read back, than JSON lines.
pub const LOG_DRIVER: &str = "local";

/// Everything needed to create one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub cmd: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// `uid:gid`.
    pub user: String,
    pub working_dir: String,
    pub network_mode: String,
    pub memory_bytes: Option<i64>,
    /// Memory plus swap; equal to `memory_bytes` means no swap, so a memory
    /// hog is killed, not slowed.
    pub memory_swap_bytes: Option<i64>,
    pub pids_limit: Option<i64>,
    pub cpu_shares: Option<i64>,
    /// Capabilities taken away (`ALL` for jobs).
    pub cap_drop: Vec<String>,
    /// Security options (`no-new-privileges` for jobs).
    pub security_opt: Vec<String>,
    /// Volumes: pip's cache (named, one per user), the test report's folder
    /// and, on a read-only root, the workspace (anonymous, removed with the
    /// container).
    pub volumes: Vec<VolumeMount>,
    /// Run on a read-only root file system; `tmpfs` and `volumes` are then
    /// the only writable places.
    pub read_only_rootfs: bool,
    /// Scratch file systems in memory: (path, mount options).
    pub tmpfs: Vec<(String, String)>,
    /// The engine's hard quota on the writable layer (`storage_opt size`),
    /// only where its storage driver has one (see `DiskLimits::storage_quota`);
    /// the disk watch bounds the volumes and every other engine.
    pub storage_size_bytes: Option<u64>,
    /// The engine's log driver; `None` leaves the engine's default.
    pub log_driver: Option<String>,
    /// The container reads its input once, on standard input, which ends
    /// when the writer closes it (see `ContainerRuntime::start_with_input`).
    pub stdin_once: bool,
    /// Environment variables beside the image's (`NAME=value`).
    pub env: Vec<String>,
}

/// What a job's own container installs before its tests: the project's
/// local entries (`.`, `-e .`, `./pkg`), from the upload, into the
/// environment the preparation made (whose build requirements they use, so
/// nothing is downloaded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobInstall {
    pub local: Vec<LocalEntry>,
    /// The project has requirements: the job gets its user's pip cache
    /// (its own, so nothing in it reaches another user's job), as pip run
    /// by the job or its tests expects one.
    pub pip_cache: bool,
}

/// What every job's environment holds beside the image's: pytest's colours
/// (it sees no terminal, so it would print none; `ci` and the page show
/// them, and strip them where they are not wanted) and a width that fits a
/// terminal and the page instead of pytest's 80 columns.
pub const JOB_ENV: [&str; 2] = ["PY_COLORS=1", "COLUMNS=120"];

/// Where the preparation container unpacks the requirements files it gets
/// (and removes them before it is committed).
pub const PREPARATION_DIR: &str = "/tmp/ci-environment";

/// `value` as one word for `sh`, whatever it holds.
fn shell_word(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// The job's script: its local entries installed (without dependencies
/// when the plan knew them, without build isolation always), then pytest.
pub fn job_script(install: &JobInstall) -> String {
    let mut script = String::from(UNPACK_FROM_STDIN);
    for entry in &install.local {
        let mut target = entry.path.clone();
        if !entry.extras.is_empty() {
            target = format!("{target}[{}]", entry.extras.join(","));
        }
        script.push_str("pip install --no-input --progress-bar off --no-build-isolation");
        if entry.dependencies_known {
            script.push_str(" --no-deps");
        }
        if entry.editable {
            script.push_str(" -e");
        }
        script.push(' ');
        script.push_str(&shell_word(&target));
        script.push_str(" 2>&1 || exit $?\n");
    }
    script.push_str(JOB_SCRIPT);
    script
}

/// A volume mounted into the container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeMount {
    /// The named volume; `None` for an anonymous one of the container's own.
    pub name: Option<String>,
    pub target: String,
    /// Labels the engine gives the volume when it creates it, so an
    /// installation can find (and sweep) its own volumes.
    pub labels: BTreeMap<String, String>,
}

/// The container of `job`, from `image`: the job script as the unprivileged user, with all
/// capabilities dropped, no new privileges, limits, the installation's
/// labels, and the project arriving on standard input.
pub fn job_container_spec(
    job: &Job,
    config: &ControllerConfig,
    install: &JobInstall,
    image: &str,
) -> ContainerSpec {
    // `pip install` writes into the image's venv; a job that installs nothing
    // (its requirements are in its environment image) runs on a read-only root.
    let read_only_rootfs = config.read_only_rootfs && install.local.is_empty();
    let installation = config.installation();
    let labels = BTreeMap::from([
        (LABEL_JOB.to_string(), job.id.to_string()),
        (LABEL_INSTALLATION.to_string(), installation.clone()),
    ]);
    let mut volumes = Vec::new();
    if let Some(cache) = config
        .pip_cache_volume_for(job.user_id)
        .filter(|_| install.pip_cache || !install.local.is_empty())
    {
        volumes.push(VolumeMount {
            name: Some(cache),
            target: format!("{JOB_HOME}/.cache/pip"),
            labels: BTreeMap::from([(LABEL_INSTALLATION.to_string(), installation)]),
        });
    }
    // The test report outlives the container's exit on a volume of its own
    // (tmpfs is gone once the container stops), read back through the
    // engine's archive API and removed with the container.
    volumes.push(VolumeMount {
        name: None,
        target: REPORT_DIR.to_string(),
        labels: BTreeMap::new(),
    });
    let tmpfs = if read_only_rootfs {
        volumes.push(VolumeMount {
            name: None,
            target: WORKSPACE_DIR.to_string(),
            labels: BTreeMap::new(),
        });
        vec![
            // `exec`: Docker mounts tmpfs `noexec` unless told, and tests
            // load what they build there (a C extension in pytest's
            // `tmp_path`), as on any fresh Python image.
            ("/tmp".to_string(), "mode=1777,exec".to_string()),
            (
                JOB_HOME.to_string(),
                format!("uid={JOB_UID},gid={JOB_UID},mode=0755,exec"),
            ),
        ]
    } else {
        Vec::new()
    };
    ContainerSpec {
        name: format!("{}ci-job-{}", config.container_prefix, job.id),
        image: image.to_string(),
        // The pytest arguments are the script's own (`"$@"`), never text for
        // a shell to read.
        cmd: ["sh", "-c", &job_script(install), "ci-job"]
            .into_iter()
            .map(str::to_string)
            .chain(job.options.pytest_args.iter().cloned())
            .collect(),
        labels,
        working_dir: WORKSPACE_DIR.into(),
        volumes,
        read_only_rootfs,
        tmpfs,
        storage_size_bytes: config.disk.storage_quota.then_some(config.disk.max_bytes),
        env: JOB_ENV.iter().map(|v| v.to_string()).collect(),
        ..sandbox(config)
    }
}

/// What every container the controller runs for users' code shares, the job
/// and its environment's preparation alike: the job's unprivileged user, the
/// job's limits and network, no capabilities, no new privileges, the log
/// driver the log pump reads, and input once on standard input.
fn sandbox(config: &ControllerConfig) -> ContainerSpec {
    ContainerSpec {
        user: format!("{JOB_UID}:{JOB_UID}"),
        network_mode: config.network_mode.clone(),
        memory_bytes: Some(config.memory_bytes),
        memory_swap_bytes: Some(config.memory_bytes),
        pids_limit: Some(config.pids_limit),
        cpu_shares: Some(config.cpu_shares),
        cap_drop: vec!["ALL".to_string()],
        security_opt: vec!["no-new-privileges".to_string()],
        log_driver: Some(LOG_DRIVER.to_string()),
        stdin_once: true,
        ..ContainerSpec::default()
    }
}

/// The preparation container of the environment `key`, from the runner
/// image `image`: it gets the requirements files on standard input (never
/// the project), installs them into the image's venv as the job's user,
/// with the job's limits and network, removes the files again and exits
/// with pip's status. Only its file system is committed; pip's download
/// cache (`pip_cache`, a volume) is not part of the environment.
pub fn preparation_container_spec(
    config: &ControllerConfig,
    key: &str,
    pip_cache: Option<String>,
    image: &str,
) -> ContainerSpec {
    let installation = config.installation();
    let no_cache = if pip_cache.is_some() {
        ""
    } else {
        " --no-cache-dir"
    };
    let script = format!(
        "mkdir -p {PREPARATION_DIR} && tar -x -C {PREPARATION_DIR} -f - 2>&1 \
|| {{ echo '[ci] The requirements did not arrive whole in the preparation container.'; exit 1; }}\n\
exec </dev/null 2>&1\n\
cd {PREPARATION_DIR} && pip install --no-input --progress-bar off{no_cache} -r requirements.txt\n\
status=$?\n\
cd / && rm -rf {PREPARATION_DIR}\n\
exit $status\n"
    );
    let volumes = pip_cache
        .map(|cache| VolumeMount {
            name: Some(cache),
            target: format!("{JOB_HOME}/.cache/pip"),
            labels: BTreeMap::from([(LABEL_INSTALLATION.to_string(), installation.clone())]),
        })
        .into_iter()
        .collect();
    let short = uuid::Uuid::new_v4().simple().to_string();
    ContainerSpec {
        name: format!(
            "{}ci-prepare-{}-{}",
            config.container_prefix,
            &key[..key.len().min(16)],
            &short[..8]
        ),
        image: image.to_string(),
        cmd: ["sh", "-c", &script, "ci-prepare"]
            .into_iter()
            .map(str::to_string)
            .collect(),
        // The committed environment inherits these labels (the engine merges
        // a container's labels, its image's among them, into the commit): an
        // empty Python label keeps it out of every installation's catalog of
        // runner images, which a controller without the environments (another
        // branch, an older release) would otherwise take it for, as the newest
        // build of its Python.
        labels: BTreeMap::from([
            (LABEL_PREPARATION.to_string(), key.to_string()),
            (LABEL_INSTALLATION.to_string(), installation),
            (LABEL_PYTHON.to_string(), String::new()),
            (LABEL_PYTHON_VERSION.to_string(), String::new()),
        ]),
        working_dir: "/".into(),
        volumes,
        // A writable root, and no quota on it: what a preparation installs is
        // bounded by the environment cache's size (the disk watch measures
        // it), not by a job's disk limit.
        read_only_rootfs: false,
        storage_size_bytes: None,
        ..sandbox(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ci_common::{JobId, UserId};

    fn job() -> Job {
        Job::queued(
            JobId::random(),
            UserId::random(),
            "d".into(),
            chrono::Utc::now(),
        )
    }

    fn config() -> ControllerConfig {
        ControllerConfig {
            image: "runner:test".into(),
            container_prefix: "p-".into(),
            network_mode: "none".into(),
            pip_cache_volume: Some("p-ci-pip-cache".into()),
            ..ControllerConfig::default()
        }
    }

    /// A job that installs its project (`-e .` in its requirements).
    fn installs() -> JobInstall {
        JobInstall {
            local: vec![LocalEntry {
                path: ".".into(),
                extras: vec![],
                editable: true,
                dependencies_known: true,
            }],
            pip_cache: true,
        }
    }

    /// The report's folder: anonymous, so it goes with the container, and
    /// not in memory, so it is still there after the job exited.
    fn report_volume() -> VolumeMount {
        VolumeMount {
            name: None,
            target: "/ci-report".into(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn the_test_report_is_written_outside_the_workspace_on_a_volume_of_the_container() {
        for project in [installs(), JobInstall::default()] {
            let spec = job_container_spec(&job(), &config(), &project, "runner:test");
            assert!(spec.volumes.contains(&report_volume()));
            assert!(!spec.tmpfs.iter().any(|(path, _)| path == "/ci-report"));
            assert!(spec.cmd[2].contains("--junitxml=/ci-report/junit.xml"));
        }
    }

    /// The sandbox every container of a job gets: the unprivileged user,
    /// the configured network and limits, no swap, no capabilities, no new
    /// privileges, the cheap log driver, and its input on standard input.
    fn assert_confined(spec: &ContainerSpec, config: &ControllerConfig) {
        assert_eq!(spec.user, "1000:1000");
        assert_eq!(spec.network_mode, "none");
        assert_eq!(spec.memory_bytes, Some(config.memory_bytes));
        assert_eq!(spec.memory_swap_bytes, spec.memory_bytes, "no swap");
        assert_eq!(spec.pids_limit, Some(config.pids_limit));
        assert_eq!(spec.cpu_shares, Some(config.cpu_shares));
        assert_eq!(spec.cap_drop, ["ALL"]);
        assert_eq!(spec.security_opt, ["no-new-privileges"]);
        assert_eq!(spec.log_driver.as_deref(), Some("local"));
        assert!(spec.stdin_once, "the input arrives on standard input");
    }

    #[test]
    fn a_job_runs_confined_as_the_unprivileged_user() {
        let (job, config) = (job(), config());
        let spec = job_container_spec(&job, &config, &installs(), "runner:test");
        assert_eq!(spec.name, format!("p-ci-job-{}", job.id));
        assert_eq!(spec.image, "runner:test");
        assert_eq!(spec.working_dir, "/workspace");
        assert_confined(&spec, &config);
        assert_eq!(
            spec.labels,
            BTreeMap::from([
                ("ci.job-id".to_string(), job.id.to_string()),
                ("ci.installation".to_string(), "p-".to_string()),
            ])
        );
    }

    #[test]
    fn a_preparation_runs_confined_as_its_job_does() {
        let config = config();
        let prep = preparation_container_spec(&config, "k", None, "runner:test");
        assert_confined(&prep, &config);
        assert!(!prep.read_only_rootfs, "pip installs into the image");
        assert_eq!(prep.storage_size_bytes, None);
        assert!(prep.tmpfs.is_empty() && prep.env.is_empty());
    }

    #[test]
    fn the_command_unpacks_the_project_from_stdin_then_runs_the_job() {
        let spec = job_container_spec(&job(), &config(), &installs(), "runner:test");
        assert_eq!(spec.cmd[..2], ["sh", "-c"]);
        assert!(spec.cmd[2].starts_with(UNPACK_FROM_STDIN));
        assert!(spec.cmd[2].ends_with(JOB_SCRIPT));
        assert_eq!(spec.cmd[3..], ["ci-job"]);
    }

    #[test]
    fn pytest_gets_its_colours_and_a_width() {
        let spec = job_container_spec(&job(), &config(), &JobInstall::default(), "runner:test");
        assert_eq!(spec.env, ["PY_COLORS=1", "COLUMNS=120"]);
    }

    #[test]
    fn local_entries_are_installed_as_one_word_each_without_isolation() {
        let install = JobInstall {
            local: vec![
                LocalEntry {
                    path: "./pkg's".into(),
                    extras: vec!["test".into(), "docs".into()],
                    editable: false,
                    dependencies_known: false,
                },
                installs().local[0].clone(),
            ],
            pip_cache: true,
        };
        let script = job_script(&install);
        assert!(script.contains(
            "pip install --no-input --progress-bar off --no-build-isolation './pkg'\\''s[test,docs]' 2>&1 || exit $?\n"
        ), "{script}");
        assert!(script.contains("--no-build-isolation --no-deps -e '.' 2>&1 || exit $?\n"));
        assert!(script.ends_with(JOB_SCRIPT));
    }

    #[test]
    fn pytest_arguments_are_argv_never_shell_text() {
        let mut job = job();
        job.options.pytest_args = vec!["-k".into(), "a and not b; rm -rf /".into(), "-x".into()];
        let spec = job_container_spec(&job, &config(), &installs(), "runner:test");
        assert_eq!(
            spec.cmd[3..],
            ["ci-job", "-k", "a and not b; rm -rf /", "-x"]
        );
        assert!(spec.cmd[2].ends_with(" \"$@\"\n"), "{}", spec.cmd[2]);
    }

    #[test]
    fn a_job_that_installs_gets_a_writable_root_and_its_users_pip_cache() {
        let (job, config) = (job(), config());
        let spec = job_container_spec(&job, &config, &installs(), "runner:test");
        assert!(!spec.read_only_rootfs);
        assert!(spec.tmpfs.is_empty());
        assert_eq!(
            spec.volumes,
            [
                VolumeMount {
                    name: Some(format!("p-ci-pip-cache-{}", job.user_id)),
                    target: "/home/runner/.cache/pip".into(),
                    labels: BTreeMap::from([("ci.installation".to_string(), "p-".to_string())]),
                },
                report_volume()
            ]
        );
    }

    #[test]
    fn a_job_whose_requirements_are_in_its_environment_runs_read_only_with_its_users_cache() {
        let job = job();
        let install = JobInstall {
            local: vec![],
            pip_cache: true,
        };
        let spec = job_container_spec(&job, &config(), &install, "env:test");
        assert!(spec.read_only_rootfs);
        assert_eq!(
            spec.volumes[0].name,
            Some(format!("p-ci-pip-cache-{}", job.user_id))
        );
    }

    #[test]
    fn a_job_that_installs_nothing_runs_on_a_read_only_root() {
        let spec = job_container_spec(&job(), &config(), &JobInstall::default(), "runner:test");
        assert!(spec.read_only_rootfs);
        assert_eq!(
            spec.volumes,
            [
                report_volume(),
                VolumeMount {
                    name: None,
                    target: "/workspace".into(),
                    labels: BTreeMap::new(),
                }
            ],
            "the workspace is the container's own volume; no pip cache"
        );
        assert_eq!(
            spec.tmpfs,
            [
                ("/tmp".to_string(), "mode=1777,exec".to_string()),
                (
                    "/home/runner".to_string(),
                    "uid=1000,gid=1000,mode=0755,exec".to_string()
                ),
            ]
        );
    }

    #[test]
    fn the_read_only_root_can_be_turned_off() {
        let config = ControllerConfig {
            read_only_rootfs: false,
            ..config()
        };
        let spec = job_container_spec(&job(), &config, &JobInstall::default(), "runner:test");
        assert!(!spec.read_only_rootfs);
        assert!(spec.tmpfs.is_empty());
        assert_eq!(
            spec.volumes,
            [report_volume()],
            "the report, no workspace volume, no pip cache for a project without requirements"
        );
    }

    #[test]
    fn the_engines_quota_bounds_a_jobs_layer_only_where_its_driver_has_one() {
        let mut config = config();
        config.disk.max_bytes = 64 << 20;
        let spec = job_container_spec(&job(), &config, &installs(), "runner:test");
        assert_eq!(
            spec.storage_size_bytes, None,
            "no quota on overlay2 over extfs"
        );
        config.disk.storage_quota = true;
        let spec = job_container_spec(&job(), &config, &installs(), "runner:test");
        assert_eq!(spec.storage_size_bytes, Some(64 << 20));
        let preparation = preparation_container_spec(&config, "k", None, "runner:test");
        assert_eq!(
            preparation.storage_size_bytes, None,
            "an environment may be larger than a job's limit"
        );
    }
}
