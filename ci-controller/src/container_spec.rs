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
use crate::junit_report::REPORT_DIR;
use crate::project_facts::ProjectFacts;
use crate::runtime::{LABEL_INSTALLATION, LABEL_JOB};

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
    /// The engine's log driver; `None` leaves the engine's default.
    pub log_driver: Option<String>,
    /// The container reads its input once, on standard input, which ends
    /// when the writer closes it (see `ContainerRuntime::start_with_input`).
    pub stdin_once: bool,
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
    project: &ProjectFacts,
    image: &str,
) -> ContainerSpec {
    // `pip install` writes into the image's venv; a job that installs nothing
    // runs on a read-only root.
    let read_only_rootfs = config.read_only_rootfs && !project.has_requirements;
    let installation = config.installation();
    let labels = BTreeMap::from([
        (LABEL_JOB.to_string(), job.id.to_string()),
        (LABEL_INSTALLATION.to_string(), installation.clone()),
    ]);
    let mut volumes = Vec::new();
    if let Some(cache) = config
        .pip_cache_volume_for(job.user_id)
        .filter(|_| !read_only_rootfs)
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
        cmd: [
            "sh",
            "-c",
            &format!("{UNPACK_FROM_STDIN}{JOB_SCRIPT}"),
            "ci-job",
        ]
        .into_iter()
        .map(str::to_string)
        .chain(job.options.pytest_args.iter().cloned())
        .collect(),
        labels,
        user: format!("{JOB_UID}:{JOB_UID}"),
        working_dir: WORKSPACE_DIR.into(),
        network_mode: config.network_mode.clone(),
        memory_bytes: Some(config.memory_bytes),
        memory_swap_bytes: Some(config.memory_bytes),
        pids_limit: Some(config.pids_limit),
        cpu_shares: Some(config.cpu_shares),
        cap_drop: vec!["ALL".to_string()],
        security_opt: vec!["no-new-privileges".to_string()],
        volumes,
        read_only_rootfs,
        tmpfs,
        log_driver: Some(LOG_DRIVER.to_string()),
        stdin_once: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn job() -> Job {
        Job::queued(
            Uuid::new_v4(),
            Uuid::new_v4(),
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

    const INSTALLS: &ProjectFacts = &ProjectFacts {
        has_requirements: true,
        requires_python: None,
    };
    const INSTALLS_NOTHING: &ProjectFacts = &ProjectFacts {
        has_requirements: false,
        requires_python: None,
    };

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
        for project in [INSTALLS, INSTALLS_NOTHING] {
            let spec = job_container_spec(&job(), &config(), project, "runner:test");
            assert!(spec.volumes.contains(&report_volume()));
            assert!(!spec.tmpfs.iter().any(|(path, _)| path == "/ci-report"));
            assert!(spec.cmd[2].contains("--junitxml=/ci-report/junit.xml"));
        }
    }

    #[test]
    fn a_job_runs_confined_as_the_unprivileged_user() {
        let (job, config) = (job(), config());
        let spec = job_container_spec(&job, &config, INSTALLS, "runner:test");
        assert_eq!(spec.name, format!("p-ci-job-{}", job.id));
        assert_eq!(spec.image, "runner:test");
        assert_eq!(spec.user, "1000:1000");
        assert_eq!(spec.working_dir, "/workspace");
        assert_eq!(spec.network_mode, "none");
        assert_eq!(spec.memory_bytes, Some(config.memory_bytes));
        assert_eq!(spec.memory_swap_bytes, spec.memory_bytes, "no swap");
        assert_eq!(spec.pids_limit, Some(config.pids_limit));
        assert_eq!(spec.cpu_shares, Some(config.cpu_shares));
        assert_eq!(spec.cap_drop, ["ALL"]);
        assert_eq!(spec.security_opt, ["no-new-privileges"]);
        assert_eq!(spec.log_driver.as_deref(), Some("local"));
        assert!(spec.stdin_once, "the project arrives on standard input");
        assert_eq!(
            spec.labels,
            BTreeMap::from([
                ("ci.job-id".to_string(), job.id.to_string()),
                ("ci.installation".to_string(), "p-".to_string()),
            ])
        );
    }

    #[test]
    fn the_command_unpacks_the_project_from_stdin_then_runs_the_job() {
        let spec = job_container_spec(&job(), &config(), INSTALLS, "runner:test");
        assert_eq!(spec.cmd[..2], ["sh", "-c"]);
        assert!(spec.cmd[2].starts_with(UNPACK_FROM_STDIN));
        assert!(spec.cmd[2].ends_with(JOB_SCRIPT));
        assert_eq!(spec.cmd[3..], ["ci-job"]);
    }

    #[test]
    fn pytest_arguments_are_argv_never_shell_text() {
        let mut job = job();
        job.options.pytest_args = vec!["-k".into(), "a and not b; rm -rf /".into(), "-x".into()];
        let spec = job_container_spec(&job, &config(), INSTALLS, "runner:test");
        assert_eq!(
            spec.cmd[3..],
            ["ci-job", "-k", "a and not b; rm -rf /", "-x"]
        );
        assert!(spec.cmd[2].ends_with(" \"$@\"\n"), "{}", spec.cmd[2]);
    }

    #[test]
    fn a_job_that_installs_gets_a_writable_root_and_its_users_pip_cache() {
        let (job, config) = (job(), config());
        let spec = job_container_spec(&job, &config, INSTALLS, "runner:test");
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
    fn a_job_that_installs_nothing_runs_on_a_read_only_root() {
        let spec = job_container_spec(&job(), &config(), INSTALLS_NOTHING, "runner:test");
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
        let spec = job_container_spec(&job(), &config, INSTALLS_NOTHING, "runner:test");
        assert!(!spec.read_only_rootfs);
        assert!(spec.tmpfs.is_empty());
        assert_eq!(
            spec.volumes.len(),
            2,
            "the pip cache and the report, no workspace volume"
        );
    }
}
