//! The controller's settings.

use std::time::Duration;

use crate::junit_report::ReportLimits;
use crate::log_pump::PumpConfig;
use crate::reaper::ReaperConfig;
use crate::workspace::UnpackLimits;

/// The base image jobs run in unless configured otherwise or they ask for
/// another Python: the one `scripts/runner-image.sh` builds by default.
pub const DEFAULT_IMAGE: &str = "ci-python-runner:3.11";

/// How a job's container receives its project: as a tar on standard input
/// (see `ContainerRuntime::start_with_input`), unpacked before [`JOB_SCRIPT`].
pub const UNPACK_FROM_STDIN: &str = "tar -x -C /workspace -f - 2>&1 \
|| { echo '[ci] The project did not arrive whole in the container.'; exit 1; }\n\
exec </dev/null\n";

/// What a job does once its project is in `/workspace` (and its local
/// entries are installed, see `container_spec::job_script`): run pytest with
/// the job's pytest arguments (the script's own, `"$@"`). Its requirements
/// are installed already, in the environment image it runs from (see
/// `environment_cache`). A project whose environment has no
/// pytest of its own runs the image's (`/opt/ci-pytest`, see
/// `runner-image/Dockerfile`), put on the path only then and only for the
/// tests, so pip never mistakes it for one the project installed. stderr
/// joins stdout so the output keeps its order. pytest writes its JUnit report
/// to [`REPORT_PATH`](crate::junit_report::REPORT_PATH), in the xunit1 family,
/// whose cases name their file (xunit2's do not), so node ids are exact; only
/// where it can: an image without a writable `/ci-report` (a custom base
/// image) runs pytest without a report, as pytest would crash at its end
/// writing one there.
pub const JOB_SCRIPT: &str = "exec 2>&1\n\
[ -d \"$(echo \"$VIRTUAL_ENV\"/lib/python3*/site-packages/pytest)\" ] \
|| export PYTHONPATH=/opt/ci-pytest${PYTHONPATH:+:$PYTHONPATH}\n\
exec python -m pytest -v $([ -w /ci-report ] && echo --junitxml=/ci-report/junit.xml -o junit_family=xunit1) \"$@\"\n";

/// The default total size of the cached environments (`CI_ENV_CACHE_BYTES`).
pub const DEFAULT_ENV_CACHE_BYTES: u64 = 10 * 1024 * 1024 * 1024;
/// The default age after which an environment is built again
/// (`CI_ENV_MAX_AGE`), so unpinned requirements pick up new releases.
pub const DEFAULT_ENV_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The default bound on a job's disk use (`CI_JOB_DISK_LIMIT`).
pub const DEFAULT_JOB_DISK_LIMIT: u64 = 4 * 1024 * 1024 * 1024;

/// How a job's disk use is bounded: as kubelet bounds a pod's ephemeral
/// storage, by measuring it through the engine and ending a job over the
/// limit (see `disk_watch`), and, where the storage driver allows it, with
/// the engine's own quota on the writable layer as well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimits {
    /// The most bytes a job may write into its writable layer, its own
    /// volumes (the workspace, the report's folder) and its user's pip
    /// cache together.
    pub max_bytes: u64,
    /// Time between two measurements of the running jobs. Each costs the
    /// engine a walk of its containers' layers and its volumes (see
    /// BENCHMARKS.md), so it is seconds, not a pass's milliseconds.
    pub every: Duration,
    /// The engine's storage driver enforces a size on the writable layer
    /// (`storage_opt size`): overlay2 on xfs with `pquota`, btrfs, zfs.
    /// Found once at start from the engine's info.
    pub storage_quota: bool,
}

impl Default for DiskLimits {
    fn default() -> Self {
        DiskLimits {
            max_bytes: DEFAULT_JOB_DISK_LIMIT,
            every: Duration::from_secs(5),
            storage_quota: false,
        }
    }
}

/// How the dependency environments are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvironmentLimits {
    /// The most bytes the environment images may take together (their own
    /// layers, not the runner image they share); the least recently used
    /// go first.
    pub max_bytes: u64,
    /// An environment built longer ago is not used again, and removed.
    pub max_age: Duration,
}

impl Default for EnvironmentLimits {
    fn default() -> Self {
        EnvironmentLimits {
            max_bytes: DEFAULT_ENV_CACHE_BYTES,
            max_age: DEFAULT_ENV_MAX_AGE,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The base image: jobs that ask for no Python (or whose Python has no
    /// runner image of its own) run in it.
    pub image: String,
    /// The Python of jobs that ask for none (`CI_PYTHON_DEFAULT`); `None`:
    /// the base image's own.
    pub python_default: Option<ci_common::PythonVersion>,
    /// Names this installation's containers (prefix of their names and value of
    /// their installation label), so installations can share an engine.
    pub container_prefix: String,
    pub network_mode: String,
    pub reconcile_interval: Duration,
    pub job_timeout: Duration,
    pub max_concurrent_jobs: usize,
    pub pump: PumpConfig,
    pub unpack: UnpackLimits,
    pub memory_bytes: i64,
    pub pids_limit: i64,
    pub cpu_shares: i64,
    /// How long a stopped job gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Name stem of the volumes that keep pip's download cache between jobs:
    /// each user gets a volume of their own (see [`ControllerConfig::pip_cache_volume_for`]).
    pub pip_cache_volume: Option<String>,
    /// Run jobs that install nothing (no `requirements.txt`) on a read-only
    /// root file system; `pip install` needs to write the image's venv.
    pub read_only_rootfs: bool,
    /// Caps on the job's test report; `None` turns collecting reports off
    /// (the benchmark's baseline).
    pub test_report: Option<ReportLimits>,
    /// What the reaper deletes and how it paces itself.
    pub reaper: ReaperConfig,
    /// How the dependency environments are kept.
    pub environments: EnvironmentLimits,
    /// How much a job may write to disk.
    pub disk: DiskLimits,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            image: DEFAULT_IMAGE.to_string(),
            python_default: None,
            container_prefix: String::new(),
            network_mode: "bridge".to_string(),
            reconcile_interval: Duration::from_secs(2),
            job_timeout: Duration::from_secs(1800),
            max_concurrent_jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            pump: PumpConfig::default(),
            unpack: UnpackLimits::default(),
            memory_bytes: 2 * 1024 * 1024 * 1024,
            pids_limit: 512,
            cpu_shares: 1024,
            stop_grace: Duration::from_secs(1),
            pip_cache_volume: Some("ci-pip-cache".to_string()),
            read_only_rootfs: true,
            test_report: Some(ReportLimits::default()),
            reaper: ReaperConfig::default(),
            environments: EnvironmentLimits::default(),
            disk: DiskLimits::default(),
        }
    }
}

impl ControllerConfig {
    /// The pip cache volume of `user`'s jobs. Per user, because the cache is
    /// writable: a volume shared by every user would let one user's job plant
    /// a wheel or an index answer that the next user's `pip install` trusts.
    pub fn pip_cache_volume_for(&self, user: ci_common::UserId) -> Option<String> {
        self.pip_cache_volume
            .as_ref()
            .map(|stem| format!("{stem}-{user}"))
    }

    /// The pip cache of the preparation containers of environments shared
    /// between users: no job mounts it, so no user's job can plant what
    /// another user's environment installs.
    pub fn shared_pip_cache_volume(&self) -> Option<String> {
        self.pip_cache_volume
            .as_ref()
            .map(|stem| format!("{stem}-environments"))
    }

    /// Names this installation `prefix`: its containers, their label, and
    /// its pip cache volumes, so that installations sharing an engine share
    /// nothing else.
    pub fn set_container_prefix(&mut self, prefix: &str) {
        self.container_prefix = prefix.to_string();
        if !prefix.is_empty() {
            self.pip_cache_volume = Some(format!("{prefix}ci-pip-cache"));
        }
    }

    /// The installation label's value: the prefix, or `default` when there is none.
    pub fn installation(&self) -> String {
        if self.container_prefix.is_empty() {
            "default".to_string()
        } else {
            self.container_prefix.clone()
        }
    }
}

/// Parses a resync period in seconds; an invalid or non-positive value falls
/// back to the default, with a warning, as the contract says.
pub fn parse_interval(raw: Option<&str>) -> Duration {
    let default = ControllerConfig::default().reconcile_interval;
    let Some(raw) = raw else { return default };
    match raw.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => Duration::from_secs_f64(secs),
        _ => {
            tracing::warn!(
                value = raw,
                "invalid reconcile interval; using the default of {default:?}"
            );
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_user_has_a_pip_cache_of_their_own() {
        let config = ControllerConfig {
            pip_cache_volume: Some("p-ci-pip-cache".into()),
            ..ControllerConfig::default()
        };
        let (a, b) = (ci_common::UserId::random(), ci_common::UserId::random());
        assert_eq!(
            config.pip_cache_volume_for(a),
            Some(format!("p-ci-pip-cache-{a}"))
        );
        assert_ne!(
            config.pip_cache_volume_for(a),
            config.pip_cache_volume_for(b)
        );
        let off = ControllerConfig {
            pip_cache_volume: None,
            ..ControllerConfig::default()
        };
        assert_eq!(off.pip_cache_volume_for(a), None);
    }

    #[test]
    fn pytest_writes_its_report_where_the_controller_reads_it() {
        let pytest = JOB_SCRIPT
            .lines()
            .find(|l| l.contains("python -m pytest"))
            .expect("a pytest line");
        let report = format!("--junitxml={}", crate::junit_report::REPORT_PATH);
        assert!(pytest.split(' ').any(|arg| arg == report), "{pytest}");
        assert!(
            pytest.contains(&format!("[ -w {} ]", crate::junit_report::REPORT_DIR)),
            "only where the report can be written: {pytest}"
        );
        assert!(pytest.contains("-o junit_family=xunit1"), "{pytest}");
    }

    #[test]
    fn the_environments_pip_cache_is_no_users() {
        let config = ControllerConfig {
            pip_cache_volume: Some("p-ci-pip-cache".into()),
            ..ControllerConfig::default()
        };
        let shared = config.shared_pip_cache_volume();
        assert_eq!(shared.as_deref(), Some("p-ci-pip-cache-environments"));
        assert_ne!(
            shared,
            config.pip_cache_volume_for(ci_common::UserId::nil())
        );
    }

    #[test]
    fn intervals_fall_back_to_the_default() {
        assert_eq!(parse_interval(Some("0.5")), Duration::from_millis(500));
        assert_eq!(parse_interval(Some("3")), Duration::from_secs(3));
        for bad in ["0", "-1", "abc", "", "NaN", "inf"] {
            assert_eq!(parse_interval(Some(bad)), Duration::from_secs(2), "{bad}");
        }
        assert_eq!(parse_interval(None), Duration::from_secs(2));
    }
}
