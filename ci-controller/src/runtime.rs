//! The container runtime the controller drives, behind a small trait, and its
//! Docker implementation through bollard.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::{
    AttachContainerOptions, Config, CreateContainerOptions, ListContainersOptions, LogOutput,
    LogsOptions, RemoveContainerOptions, StopContainerOptions,
};
use bollard::models::{HostConfig, HostConfigLogConfig, Mount, MountTypeEnum, MountVolumeOptions};
use bollard::Docker;
use bytes::Bytes;
use ci_common::JobId;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

/// Label carrying the job a container runs.
pub const LABEL_JOB: &str = "ci.job-id";
/// Label carrying the installation (container prefix) a container belongs to,
/// so installations sharing one engine never touch each other's containers.
pub const LABEL_INSTALLATION: &str = "ci.installation";

/// Everything needed to create one job's container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub cmd: Vec<String>,
    pub labels: HashMap<String, String>,
    pub user: String,
    pub working_dir: String,
    pub network_mode: String,
    pub memory_bytes: Option<i64>,
    pub pids_limit: Option<i64>,
    pub cpu_shares: Option<i64>,
    /// A named volume mounted at this path, shared by one user's jobs (pip's cache).
    pub cache_volume: Option<(String, String)>,
    /// Run on a read-only root file system. The working directory then
    /// becomes a volume of the container's own (the project is copied into it
    /// before the start) and `tmpfs` lists the other writable places.
    pub read_only_rootfs: bool,
    /// Scratch file systems in memory: (path, mount options).
    pub tmpfs: Vec<(String, String)>,
}

/// A container of this installation, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub job_id: Option<JobId>,
    pub running: bool,
}

/// What a container's state says about how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub running: bool,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
}

/// One line (or piece of a long line) of a container's output, with the
/// runtime's timestamp for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// RFC 3339 with nanoseconds, as Docker writes it.
    pub timestamp: String,
    pub bytes: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("image {0} not found")]
    ImageMissing(String),
    #[error("container {0} not found")]
    NotFound(String),
    #[error("Docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("writing to the container's input: {0}")]
    Input(#[from] std::io::Error),
    /// The engine broke off reading the container's log and said so in the
    /// stream itself (`Error grabbing logs: …`) instead of failing the call.
    /// What follows in that stream cannot be trusted; read again from the
    /// last line stored.
    #[error("the Docker engine broke off reading the job's output: {0}")]
    LogReadBroken(String),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// What a container is fed on its standard input: chunks as they are made,
/// so the whole input is never in memory at once.
pub type InputStream = BoxStream<'static, std::io::Result<Bytes>>;

#[async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    async fn image_exists(&self, image: &str) -> Result<bool>;
    /// Creates (does not start) a container; returns its id.
    async fn create(&self, spec: &ContainerSpec) -> Result<String>;
    async fn start(&self, id: &str) -> Result<()>;
    /// Starts the container and writes `input` to its standard input, chunk
    /// by chunk as it comes, which is then closed. The start call comes first,
    /// so the engine boots the container while the input is still on its
    /// way. An error item in `input` abandons the input without closing it
    /// cleanly, and is returned.
    async fn start_with_input(&self, id: &str, input: InputStream) -> Result<()>;
    /// `None` when the container does not exist.
    async fn inspect(&self, id: &str) -> Result<Option<ContainerState>>;
    /// Follows the container's output (stdout and stderr) from `since_secs`
    /// (Unix seconds) or the beginning, until the container stops.
    fn logs(&self, id: &str, since_secs: Option<i64>) -> BoxStream<'static, Result<LogLine>>;
    /// Stops a running container, killing it after `grace`; a container that is
    /// gone or already stopped is fine.
    async fn stop(&self, id: &str, grace: Duration) -> Result<()>;
    /// Removes a container and its anonymous volumes; a missing one is fine.
    async fn remove(&self, id: &str) -> Result<()>;
    /// The containers labelled with this installation.
    async fn list(&self, installation: &str) -> Result<Vec<ContainerInfo>>;
}

/// The Docker engine, reached through `DOCKER_HOST` or the local socket.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
}

fn is_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}

impl DockerRuntime {
    /// Connects and agrees on an API version the engine speaks (Debian's engine
    /// is older than bollard's default).
    pub async fn connect() -> Result<Self> {
        let docker = Docker::connect_with_defaults()?;
        let docker = docker.negotiate_version().await?;
        docker.ping().await?;
        Ok(DockerRuntime { docker })
    }
}

/// The volumes of a job's container: pip's shared cache, and on a read-only
/// root an anonymous volume for the workspace, removed with the container.
fn mounts(spec: &ContainerSpec) -> Vec<Mount> {
    let mut mounts = Vec::new();
    if let Some((volume, target)) = &spec.cache_volume {
        // Labelled like the containers when the engine creates it, so an
        // installation can find (and sweep) its own volumes.
        let labels = spec
            .labels
            .get_key_value(LABEL_INSTALLATION)
            .map(|(k, v)| HashMap::from([(k.clone(), v.clone())]));
        mounts.push(Mount {
            typ: Some(MountTypeEnum::VOLUME),
            source: Some(volume.clone()),
            target: Some(target.clone()),
            volume_options: Some(MountVolumeOptions {
                labels,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if spec.read_only_rootfs {
        mounts.push(Mount {
            typ: Some(MountTypeEnum::VOLUME),
            target: Some(spec.working_dir.clone()),
            ..Default::default()
        });
    }
    mounts
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    async fn image_exists(&self, image: &str) -> Result<bool> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        let host_config = HostConfig {
            network_mode: Some(spec.network_mode.clone()),
            memory: spec.memory_bytes,
            // No swap beyond the memory limit: a memory hog is killed, not slowed.
            memory_swap: spec.memory_bytes,
            pids_limit: spec.pids_limit,
            cpu_shares: spec.cpu_shares,
            cap_drop: Some(vec!["ALL".to_string()]),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            mounts: Some(mounts(spec)),
            readonly_rootfs: Some(spec.read_only_rootfs),
            // The engine's `local` log format (length-prefixed protobuf) costs it
            // less to write and to read back for the log pump than JSON lines.
            log_config: Some(HostConfigLogConfig {
                typ: Some("local".to_string()),
                config: None,
            }),
            tmpfs: (!spec.tmpfs.is_empty()).then(|| spec.tmpfs.iter().cloned().collect()),
            ..Default::default()
        };
        let config = Config {
            image: Some(spec.image.clone()),
            cmd: Some(spec.cmd.clone()),
            labels: Some(spec.labels.clone()),
            user: Some(spec.user.clone()),
            working_dir: Some(spec.working_dir.clone()),
            tty: Some(false),
            // The job reads its workspace from standard input (see
            // `start_with_input`): one stream, no copy into the file system.
            open_stdin: Some(true),
            stdin_once: Some(true),
            attach_stdin: Some(true),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            network_disabled: Some(spec.network_mode == "none"),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: spec.name.as_str(),
            platform: None,
        };
        match self.docker.create_container(Some(options), config).await {
            Ok(created) => Ok(created.id),
            Err(e) if is_status(&e, 404) => Err(RuntimeError::ImageMissing(spec.image.clone())),
            Err(e) => Err(e.into()),
        }
    }

    async fn start(&self, id: &str) -> Result<()> {
        Ok(self.docker.start_container::<String>(id, None).await?)
    }

    async fn start_with_input(&self, id: &str, mut input: InputStream) -> Result<()> {
        // Attached before the start, so not a byte of the input is missed; the
        // container was created with `stdin_once`, so closing our side ends
        // its standard input.
        let options = AttachContainerOptions::<String> {
            stdin: Some(true),
            stream: Some(true),
            ..Default::default()
        };
        let mut attached = self.docker.attach_container(id, Some(options)).await?;
        self.start(id).await?;
        // One chunk at a time: the producer waits while the engine is behind.
        while let Some(chunk) = input.next().await {
            attached.input.write_all(&chunk?).await?;
        }
        attached.input.flush().await?;
        attached.input.shutdown().await?;
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerState>> {
        match self.docker.inspect_container(id, None).await {
            Ok(info) => {
                let state = info.state.unwrap_or_default();
                Ok(Some(ContainerState {
                    running: state.running.unwrap_or(false),
                    exit_code: state.exit_code,
                    oom_killed: state.oom_killed.unwrap_or(false),
                }))
            }
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn logs(&self, id: &str, since_secs: Option<i64>) -> BoxStream<'static, Result<LogLine>> {
        let options = LogsOptions::<String> {
            follow: true,
            stdout: true,
            stderr: true,
            timestamps: true,
            since: since_secs.unwrap_or(0),
            ..Default::default()
        };
        self.docker
            .logs(id, Some(options))
            .map(|item| log_line(item?))
            .boxed()
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let options = StopContainerOptions {
            t: grace.as_secs() as i64,
        };
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // 304: already stopped; 404: already gone.
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // 409: removal already in progress.
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self, installation: &str) -> Result<Vec<ContainerInfo>> {
        let mut filters = HashMap::new();
        filters.insert(
            "label".to_string(),
            vec![format!("{LABEL_INSTALLATION}={installation}")],
        );
        let options = ListContainersOptions {
            all: true,
            filters,
            ..Default::default()
        };
        let containers = self.docker.list_containers(Some(options)).await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                // The filter already matched; this guards against prefix look-alikes.
                if labels.get(LABEL_INSTALLATION).map(String::as_str) != Some(installation) {
                    return None;
                }
                Some(ContainerInfo {
                    id: c.id?,
                    job_id: labels.get(LABEL_JOB).and_then(|j| j.parse().ok()),
                    running: c.state.as_deref() == Some("running"),
                })
            })
            .collect())
    }
}

/// One frame of a log read with timestamps, as output, or as the engine's
/// own complaint. Every frame of the container's output starts with its
/// timestamp (we ask for them), so a frame without one is the engine talking:
/// its `Error grabbing logs: …`, which it writes into the stream as a
/// system-error frame (stream type 3, which bollard hands over undecoded, as
/// `Console`, header bytes and all) or, in some versions, as plain stdout.
fn log_line(frame: LogOutput) -> Result<LogLine> {
    let message = match frame {
        LogOutput::StdOut { message }
        | LogOutput::StdErr { message }
        | LogOutput::StdIn { message } => message,
        LogOutput::Console { message } => return Err(broken_read(&message)),
    };
    let line = split_timestamp(message);
    if line.timestamp.is_empty() {
        return Err(broken_read(&line.bytes));
    }
    Ok(line)
}

/// The engine's text, without the frame header bytes bollard left on it.
fn broken_read(message: &[u8]) -> RuntimeError {
    let text = String::from_utf8_lossy(message);
    let text = match text.find("Error grabbing logs:") {
        Some(at) => &text[at..],
        None => &text,
    };
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    RuntimeError::LogReadBroken(text.trim().to_string())
}

/// Splits Docker's `<RFC 3339 timestamp> <text>` log framing.
fn split_timestamp(message: Bytes) -> LogLine {
    match message.iter().position(|b| *b == b' ') {
        Some(space) if space > 0 && message[..space].ends_with(b"Z") => LogLine {
            timestamp: String::from_utf8_lossy(&message[..space]).into_owned(),
            bytes: message.slice(space + 1..),
        },
        _ => LogLine {
            timestamp: String::new(),
            bytes: message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_timestamps_are_split_off() {
        let line = split_timestamp(Bytes::from_static(
            b"2026-11-22T19:00:00.123456789Z hello world\n",
        ));
        assert_eq!(line.timestamp, "2026-11-22T19:00:00.123456789Z");
        assert_eq!(&line.bytes[..], b"hello world\n");
        let bare = split_timestamp(Bytes::from_static(b"no timestamp\n"));
        assert_eq!(bare.timestamp, "");
        assert_eq!(&bare.bytes[..], b"no timestamp\n");
    }

    #[test]
    fn the_engines_own_error_frames_are_not_output() {
        // A system-error frame (type 3): bollard passes it on undecoded.
        let mut frame = vec![3u8, 0, 0, 0, 0, 0, 0, 70];
        frame.extend_from_slice(
            b"Error grabbing logs: error unmarshalling log entry (size=1234): proto\n",
        );
        let err = log_line(LogOutput::Console {
            message: Bytes::from(frame),
        })
        .unwrap_err();
        match err {
            RuntimeError::LogReadBroken(text) => assert_eq!(
                text,
                "Error grabbing logs: error unmarshalling log entry (size=1234): proto"
            ),
            other => panic!("{other}"),
        }
        // Older engines write it as a plain stdout frame, without a timestamp.
        let err = log_line(LogOutput::StdOut {
            message: Bytes::from_static(b"Error grabbing logs: unexpected EOF\n"),
        })
        .unwrap_err();
        assert!(
            matches!(err, RuntimeError::LogReadBroken(t) if t == "Error grabbing logs: unexpected EOF")
        );
        // The job printing those words is output like any other.
        let line = log_line(LogOutput::StdErr {
            message: Bytes::from_static(
                b"2026-11-22T19:00:00.1Z Error grabbing logs: just a print\n",
            ),
        })
        .unwrap();
        assert_eq!(&line.bytes[..], b"Error grabbing logs: just a print\n");
    }
}
