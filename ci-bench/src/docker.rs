//! The baselines: the same job done by hand through the Docker CLI, and the
//! engine's own record of when containers started.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ci_common::Job;
use ci_controller::config::ControllerConfig;
use ci_controller::container_spec::{job_container_spec, ContainerSpec, JobInstall, VolumeMount};
use ci_controller::runtime::LABEL_JOB;
use ci_controller::workspace::zip_to_tar;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use crate::error::{BenchError, Result};

/// Label on the containers the benchmark makes by hand, so that cleanup finds
/// them and the controller (which only looks at its installation label) never
/// mistakes them for orphans of its own.
pub const LABEL_BENCH: &str = "ci.bench";

/// Runs `docker ARGS` to completion; its stdout, or an error with its stderr.
pub async fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(BenchError::io("running docker"))?;
    if !out.status.success() {
        return Err(BenchError::Command {
            command: format!("docker {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The job by hand: the very container the controller would create for a
/// job of this system ([`job_container_spec`]), spelled for the Docker CLI
/// (`docker create -i`, then `docker start -a -i` with the project's tar on
/// standard input, as the controller streams it).
#[derive(Debug, Clone)]
pub struct ManualJob {
    /// The controller's configuration, as the system under test runs it.
    pub config: ControllerConfig,
    /// Value of [`LABEL_BENCH`] (the system's container prefix).
    pub bench_label: String,
    /// Whose job it is (names the pip cache volume, as for a real user).
    pub user: ci_common::UserId,
    /// What the job installs itself (its project's local entries): the
    /// controller's job runs from an environment with the rest installed.
    pub install: JobInstall,
}

/// What one hand-made run saw, timed from just before `docker create`.
#[derive(Debug, Clone)]
pub struct ManualRun {
    /// The container's id (gone by the time the run is returned).
    pub id: String,
    pub started: Instant,
    /// `started` on the wall clock, to compare with the engine's event times.
    pub started_wall: SystemTime,
    /// When the first complete output line arrived.
    pub first_line: Option<Instant>,
    /// When the last output arrived.
    pub last_output: Option<Instant>,
    /// When `docker rm` had returned.
    pub ended: Instant,
    pub output: Vec<u8>,
    pub exit_code: Option<i32>,
}

impl ManualRun {
    pub fn total(&self) -> Duration {
        self.ended - self.started
    }
}

/// A project with nothing in it, as a workspace tar (two zero blocks end a
/// tar archive): the job script runs in an empty folder.
pub fn empty_project() -> Vec<u8> {
    vec![0; 1024]
}

/// The workspace tar the controller would stream for a project zip.
pub fn project_tar(zip: &[u8]) -> Result<Vec<u8>> {
    zip_to_tar(zip, ControllerConfig::default().unpack)
        .map_err(|e| BenchError::Setup(format!("the project does not unpack: {e}")))
}

impl ManualJob {
    /// The controller's container for a fresh job with `project`, labelled for
    /// the benchmark instead of the installation, so that the controller never
    /// takes it for an orphan of its own and the cleanup finds it.
    pub fn spec(&self) -> ContainerSpec {
        let mut spec =
            job_container_spec(&self.job(), &self.config, &self.install, &self.config.image);
        spec.labels = BTreeMap::from([(LABEL_BENCH.to_string(), self.bench_label.clone())]);
        spec
    }

    /// A fresh queued job of this user's.
    fn job(&self) -> Job {
        Job::queued(
            ci_common::JobId::random(),
            self.user,
            String::new(),
            chrono::Utc::now(),
        )
    }

    /// `docker create` (the container of [`ManualJob::spec`]), `docker start
    /// -a -i` with `project` (a workspace tar) on its standard input and its
    /// output read (and copied to `sink` when given), `docker rm`.
    pub async fn run(&self, project: &[u8], sink: Option<&Path>) -> Result<ManualRun> {
        self.run_spec(&self.spec(), project, sink).await
    }

    /// [`ManualJob::run`] of another container than the controller's
    /// (a baseline that differs from it on purpose).
    pub async fn run_spec(
        &self,
        spec: &ContainerSpec,
        project: &[u8],
        sink: Option<&Path>,
    ) -> Result<ManualRun> {
        let args = create_args(spec);
        let started_wall = SystemTime::now();
        let started = Instant::now();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = docker(&args).await?.trim().to_string();
        let result = start_with_input(&id, project, sink, started, started_wall).await;
        let removed = docker(&["rm", "-f", "-v", &id]).await;
        let mut run = result?;
        removed?;
        run.ended = Instant::now();
        Ok(run)
    }
}

/// `docker create` arguments for `spec`: what `DockerRuntime::create` asks
/// the engine for, flag by flag. The spec is taken apart whole, so a field
/// added to it does not compile until it is spelled here too.
pub fn create_args(spec: &ContainerSpec) -> Vec<String> {
    let ContainerSpec {
        name,
        image,
        cmd,
        labels,
        user,
        working_dir,
        network_mode,
        memory_bytes,
        memory_swap_bytes,
        pids_limit,
        cpu_shares,
        cap_drop,
        security_opt,
        volumes,
        read_only_rootfs,
        tmpfs,
        storage_size_bytes,
        log_driver,
        stdin_once,
        env,
    } = spec;
    let mut args: Vec<String> = vec!["create".into()];
    let mut flag = |name: &str, value: String| {
        args.push(name.to_string());
        args.push(value);
    };
    if !name.is_empty() {
        flag("--name", name.clone());
    }
    for (key, value) in labels {
        flag("--label", format!("{key}={value}"));
    }
    flag("--user", user.clone());
    flag("--workdir", working_dir.clone());
    for variable in env {
        flag("--env", variable.clone());
    }
    // `none` also disables networking, as the API's `NetworkDisabled` does.
    flag("--network", network_mode.clone());
    let limits = [
        ("--memory", memory_bytes),
        ("--memory-swap", memory_swap_bytes),
        ("--pids-limit", pids_limit),
        ("--cpu-shares", cpu_shares),
    ];
    for (name, value) in limits {
        if let Some(value) = value {
            flag(name, value.to_string());
        }
    }
    for cap in cap_drop {
        flag("--cap-drop", cap.clone());
    }
    for opt in security_opt {
        flag("--security-opt", opt.clone());
    }
    for VolumeMount {
        name,
        target,
        labels,
    } in volumes
    {
        let mut mount = String::from("type=volume");
        if let Some(name) = name {
            mount.push_str(&format!(",src={name}"));
        }
        mount.push_str(&format!(",dst={target}"));
        for (key, value) in labels {
            mount.push_str(&format!(",volume-label={key}={value}"));
        }
        flag("--mount", mount);
    }
    for (path, options) in tmpfs {
        flag("--tmpfs", format!("{path}:{options}"));
    }
    if let Some(bytes) = storage_size_bytes {
        flag("--storage-opt", format!("size={bytes}"));
    }
    if let Some(driver) = log_driver {
        flag("--log-driver", driver.clone());
    }
    if *read_only_rootfs {
        args.push("--read-only".into());
    }
    if *stdin_once {
        // With `start -a -i`, the container's standard input ends when ours does.
        args.push("--interactive".into());
    }
    args.push(image.clone());
    args.extend(cmd.iter().cloned());
    args
}

/// `docker start -a -i`: writes `input` to the container's standard input
/// while its output is read, as the controller's runtime does.
async fn start_with_input(
    id: &str,
    input: &[u8],
    sink: Option<&Path>,
    started: Instant,
    started_wall: SystemTime,
) -> Result<ManualRun> {
    let mut child = Command::new("docker")
        .args(["start", "-a", "-i", id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(BenchError::io("running docker start"))?;
    let mut file = match sink {
        Some(path) => Some(
            tokio::fs::File::create(path)
                .await
                .map_err(BenchError::io(format!("creating {}", path.display())))?,
        ),
        None => None,
    };
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| BenchError::Setup("docker start has no stdin".into()))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::Setup("docker start has no stdout".into()))?;
    let write = async {
        stdin
            .write_all(input)
            .await
            .map_err(BenchError::io("writing the project to docker start"))?;
        // Closing it ends the container's standard input.
        drop(stdin);
        Ok::<_, BenchError>(())
    };
    let (written, output) = tokio::join!(write, read_timed(&mut stdout, file.as_mut()));
    written?;
    let output = output?;
    let status = child
        .wait()
        .await
        .map_err(BenchError::io("waiting for docker start"))?;
    if let Some(f) = file.as_mut() {
        f.flush().await.map_err(BenchError::io("writing output"))?;
    }
    Ok(ManualRun {
        id: id.to_string(),
        started,
        started_wall,
        first_line: output.first_line,
        last_output: output.last_output,
        ended: Instant::now(),
        output: output.bytes,
        exit_code: status.code(),
    })
}

/// Output read from a pipe, with when its first line and its last bytes came.
#[derive(Debug, Default)]
pub struct TimedOutput {
    pub bytes: Vec<u8>,
    pub first_line: Option<Instant>,
    pub last_output: Option<Instant>,
}

/// Reads a pipe to its end, noting when the first line and the last bytes came,
/// copying to `file` as it goes.
pub async fn read_timed(
    pipe: &mut (impl tokio::io::AsyncRead + Unpin),
    mut file: Option<&mut tokio::fs::File>,
) -> Result<TimedOutput> {
    let mut out = TimedOutput::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = pipe
            .read(&mut buf)
            .await
            .map_err(BenchError::io("reading output"))?;
        if n == 0 {
            return Ok(out);
        }
        let now = Instant::now();
        if out.first_line.is_none() && buf[..n].contains(&b'\n') {
            out.first_line = Some(now);
        }
        out.last_output = Some(now);
        if let Some(f) = file.as_mut() {
            f.write_all(&buf[..n])
                .await
                .map_err(BenchError::io("writing output"))?;
        }
        out.bytes.extend_from_slice(&buf[..n]);
    }
}

/// Start times of containers, from `docker events`: the engine's own clock,
/// not the controller's word. Keyed by the job-id label where there is one
/// (the controller's containers), else by container id (the hand-made ones).
pub struct StartEvents {
    child: Child,
    seen: Arc<Mutex<HashMap<String, SystemTime>>>,
    notify: Arc<Notify>,
    reader: tokio::task::JoinHandle<()>,
}

impl StartEvents {
    /// Follows start events of containers carrying `label` (`key=value`) from
    /// `since` on (so that none is missed while the CLI connects).
    pub async fn watch(label: &str, since: SystemTime) -> Result<StartEvents> {
        let since = since
            .duration_since(UNIX_EPOCH)
            .map_err(|_| BenchError::Setup("the clock is before 1970".into()))?;
        let mut child = Command::new("docker")
            .args([
                "events",
                "--format",
                "{{json .}}",
                "--since",
                &format!("{}.{:09}", since.as_secs(), since.subsec_nanos()),
                "--filter",
                "event=start",
                "--filter",
                &format!("label={label}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(BenchError::io("running docker events"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Setup("docker events has no stdout".into()))?;
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let notify = Arc::new(Notify::new());
        let reader = tokio::spawn({
            let seen = seen.clone();
            let notify = notify.clone();
            async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some((job, at)) = parse_start_event(&line) {
                        if let Ok(mut seen) = seen.lock() {
                            seen.insert(job, at);
                        }
                        notify.notify_waiters();
                    }
                }
            }
        });
        Ok(StartEvents {
            child,
            seen,
            notify,
            reader,
        })
    }

    /// When the container of `key` (job id or container id) started, waiting up
    /// to `limit` for the event.
    pub async fn started(&self, key: &str, limit: Duration) -> Result<SystemTime> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.notify.notified();
            if let Some(at) = self.seen.lock().ok().and_then(|s| s.get(key).copied()) {
                return Ok(at);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(BenchError::timeout(
                    format!("the start event of container {key}"),
                    limit,
                ));
            }
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        self.reader.abort();
    }
}

/// `(job id or container id, time)` of a `docker events` JSON line for a
/// container start.
fn parse_start_event(line: &str) -> Option<(String, SystemTime)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let job = v
        .pointer("/Actor/Attributes")
        .and_then(|a| a.get(LABEL_JOB))
        .or_else(|| v.get("id"))?
        .as_str()?
        .to_string();
    let nanos = v.get("timeNano")?.as_u64()?;
    Some((job, UNIX_EPOCH + Duration::from_nanos(nanos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_events_are_parsed_from_docker_json() {
        let line = r#"{"status":"start","id":"abc","from":"img","Type":"container","Action":"start","Actor":{"ID":"abc","Attributes":{"ci.job-id":"5b0c","ci.installation":"p-","image":"img"}},"scope":"local","time":1700000000,"timeNano":1700000000123456789}"#;
        let (job, at) = parse_start_event(line).unwrap();
        assert_eq!(job, "5b0c");
        assert_eq!(
            at.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_nanos(1_700_000_000_123_456_789)
        );
        assert!(parse_start_event("not json").is_none());
        assert!(parse_start_event(r#"{"Actor":{"Attributes":{}},"timeNano":1}"#).is_none());
        let (id, _) =
            parse_start_event(r#"{"id":"c0ffee","Actor":{"Attributes":{}},"timeNano":1}"#).unwrap();
        assert_eq!(id, "c0ffee");
    }

    fn manual_job() -> ManualJob {
        let mut config = ControllerConfig {
            image: "img:latest".into(),
            network_mode: "none".into(),
            ..ControllerConfig::default()
        };
        config.set_container_prefix("p-");
        ManualJob {
            config,
            bench_label: "p-".into(),
            user: ci_common::UserId::random(),
            install: JobInstall::default(),
        }
    }

    /// A job that installs its own project (`.` in its requirements).
    fn installs_itself() -> JobInstall {
        use ci_controller::environment::LocalEntry;
        JobInstall {
            local: vec![LocalEntry {
                path: ".".into(),
                extras: vec![],
                editable: false,
                dependencies_known: true,
            }],
            pip_cache: true,
        }
    }

    #[test]
    fn hand_made_containers_are_the_controllers_labelled_for_the_benchmark() {
        for install in [JobInstall::default(), installs_itself()] {
            let manual = ManualJob {
                install: install.clone(),
                ..manual_job()
            };
            let spec = manual.spec();
            assert_eq!(
                spec.labels,
                BTreeMap::from([("ci.bench".to_string(), "p-".to_string())]),
                "never the installation's label: the controller would sweep it"
            );
            let mut controllers = job_container_spec(
                &manual.job(),
                &manual.config,
                &install,
                &manual.config.image,
            );
            // Only what names one job differs.
            controllers.name.clone_from(&spec.name);
            controllers.labels.clone_from(&spec.labels);
            assert_eq!(spec, controllers, "{install:?}");
        }
    }

    #[test]
    fn a_spec_is_spelled_for_the_cli_flag_by_flag() {
        let manual = manual_job();
        let spec = manual.spec();
        let args = create_args(&spec);
        let mut expected: Vec<String> = [
            "create",
            "--name",
            &spec.name,
            "--label",
            "ci.bench=p-",
            "--user",
            "1000:1000",
            "--workdir",
            "/workspace",
            "--env",
            "PY_COLORS=1",
            "--env",
            "COLUMNS=120",
            "--network",
            "none",
            "--memory",
            "2147483648",
            "--memory-swap",
            "2147483648",
            "--pids-limit",
            "512",
            "--cpu-shares",
            "1024",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--mount",
            "type=volume,dst=/ci-report",
            "--mount",
            "type=volume,dst=/workspace",
            "--tmpfs",
            "/tmp:mode=1777,exec",
            "--tmpfs",
            "/home/runner:uid=1000,gid=1000,mode=0755,exec",
            "--log-driver",
            "local",
            "--read-only",
            "--interactive",
            "img:latest",
        ]
        .map(String::from)
        .to_vec();
        expected.extend(spec.cmd.iter().cloned());
        assert_eq!(args, expected);

        let installs = ManualJob {
            install: installs_itself(),
            ..manual
        }
        .spec();
        let args = create_args(&installs).join(" ");
        assert!(!args.contains("--read-only") && !args.contains("--tmpfs"));
        assert!(args.contains(&format!(
            "--mount type=volume,src=p-ci-pip-cache-{},dst=/home/runner/.cache/pip,volume-label=ci.installation=p-",
            manual.user
        )));
    }
}
