//! The baselines: the same job done by hand through the Docker CLI, and the
//! engine's own record of when containers started.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ci_controller::config::{ControllerConfig, JOB_SCRIPT};
use ci_controller::runtime::LABEL_JOB;
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

/// How the controller would create a job's container, spelled for the CLI: the
/// same image, command, user, working folder, network, limits and cache volume.
#[derive(Debug, Clone)]
pub struct ManualJob {
    pub image: String,
    /// Value of [`LABEL_BENCH`] (the system's container prefix).
    pub bench_label: String,
    pub network: String,
    pub cache_volume: Option<String>,
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

impl ManualJob {
    fn create_args(&self) -> Vec<String> {
        let defaults = ControllerConfig::default();
        let mut args: Vec<String> = vec![
            "create".into(),
            "--label".into(),
            format!("{LABEL_BENCH}={}", self.bench_label),
            "--user".into(),
            "1000:1000".into(),
            "--workdir".into(),
            "/workspace".into(),
            "--network".into(),
            self.network.clone(),
            "--memory".into(),
            defaults.memory_bytes.to_string(),
            "--memory-swap".into(),
            defaults.memory_bytes.to_string(),
            "--pids-limit".into(),
            defaults.pids_limit.to_string(),
            "--cpu-shares".into(),
            defaults.cpu_shares.to_string(),
            "--cap-drop".into(),
            "ALL".into(),
            "--security-opt".into(),
            "no-new-privileges".into(),
        ];
        if let Some(volume) = &self.cache_volume {
            args.push("--mount".into());
            args.push(format!(
                "type=volume,src={volume},dst=/home/runner/.cache/pip"
            ));
        }
        args.extend([
            self.image.clone(),
            "sh".into(),
            "-c".into(),
            JOB_SCRIPT.into(),
        ]);
        args
    }

    /// `docker create` (+ `docker cp` of `project` into /workspace when given),
    /// `docker start -a` with its output read (and copied to `sink` when given),
    /// `docker rm`.
    pub async fn run(&self, project: Option<&Path>, sink: Option<&Path>) -> Result<ManualRun> {
        let started_wall = SystemTime::now();
        let started = Instant::now();
        let args = self.create_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = docker(&args).await?.trim().to_string();
        let result = self
            .fill_and_start(&id, project, sink, started, started_wall)
            .await;
        let removed = docker(&["rm", "-f", "-v", &id]).await;
        let mut run = result?;
        removed?;
        run.ended = Instant::now();
        Ok(run)
    }

    async fn fill_and_start(
        &self,
        id: &str,
        project: Option<&Path>,
        sink: Option<&Path>,
        started: Instant,
        started_wall: SystemTime,
    ) -> Result<ManualRun> {
        if let Some(dir) = project {
            let source = format!("{}/.", dir.display());
            docker(&["cp", &source, &format!("{id}:/workspace")]).await?;
        }
        let mut child = Command::new("docker")
            .args(["start", "-a", id])
            .stdin(Stdio::null())
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
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Setup("docker start has no stdout".into()))?;
        let output = read_timed(&mut stdout, file.as_mut()).await?;
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

/// Removes, synchronously and best-effort, every container carrying `label`
/// (`key=value`): used on the way out, even after a failure.
pub fn remove_labelled_blocking(label: &str) {
    let Ok(out) = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}")])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if ids.is_empty() {
        return;
    }
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", "-v"])
        .args(&ids)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes the volumes that carry `label` (`key=value`), best-effort.
pub fn remove_labelled_volumes_blocking(label: &str) {
    let listed = std::process::Command::new("docker")
        .args(["volume", "ls", "-q", "--filter"])
        .arg(format!("label={label}"))
        .output();
    let Ok(listed) = listed else { return };
    for name in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
        remove_volume_blocking(name);
    }
}

/// Removes a named volume, best-effort.
pub fn remove_volume_blocking(name: &str) {
    let _ = std::process::Command::new("docker")
        .args(["volume", "rm", "-f", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
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

    #[test]
    fn hand_made_containers_match_the_controllers() {
        let job = ManualJob {
            image: "img:latest".into(),
            bench_label: "p-".into(),
            network: "none".into(),
            cache_volume: Some("p-ci-pip-cache".into()),
        };
        let args = job.create_args();
        let joined = args.join(" ");
        assert!(joined.contains("--user 1000:1000 --workdir /workspace --network none"));
        assert!(joined.contains("--label ci.bench=p-"));
        assert!(joined.contains("src=p-ci-pip-cache"));
        assert_eq!(args.last().map(String::as_str), Some(JOB_SCRIPT));
    }
}
