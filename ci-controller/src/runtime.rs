//! The container runtime the controller drives, behind a small trait, and its
//! Docker implementation through bollard.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::{
    AttachContainerOptions, Config, CreateContainerOptions, DownloadFromContainerOptions,
    ListContainersOptions, LogOutput, LogsOptions, RemoveContainerOptions, StopContainerOptions,
};
use bollard::image::{CommitContainerOptions, ListImagesOptions, RemoveImageOptions};
use bollard::models::{
    HostConfig, HostConfigLogConfig, Mount, MountPointTypeEnum, MountTypeEnum, MountVolumeOptions,
    SystemDataUsageResponse, SystemInfo,
};
use bollard::volume::RemoveVolumeOptions;
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
/// Label carrying the environment key a preparation container installs, so
/// that the next leader finds (and removes) one a killed controller left.
pub const LABEL_PREPARATION: &str = "ci.environment.preparation";

pub use crate::container_spec::{ContainerSpec, VolumeMount};

/// A container of this installation, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub job_id: Option<JobId>,
    /// The environment key a preparation container installs; `None` for a
    /// job's container (which may inherit the label from its environment
    /// image, so the job label decides).
    pub preparation: Option<String>,
    pub running: bool,
}

/// An image on the engine, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageInfo {
    pub id: String,
    /// Its `name:tag`s, if any.
    pub tags: Vec<String>,
    pub labels: HashMap<String, String>,
    /// When it was built (Unix seconds), so the newest build of a Python wins.
    pub created: i64,
    /// Bytes, with the layers it shares with its base image.
    pub size: u64,
}

/// What became of an image or a volume asked to be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// A container (running or not) uses it: the engine keeps it.
    InUse,
    Missing,
}

impl ImageInfo {
    /// What a container is created from: the first tag, which says what it
    /// is in the job's record, else the id.
    pub fn reference(&self) -> &str {
        self.tags.first().map_or(&self.id, String::as_str)
    }
}

/// What a container's state says about how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub running: bool,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
}

/// One file read from a container by [`ContainerRuntime::read_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRead {
    /// No such file (or no such container).
    Missing,
    /// Something else than a regular file is there (a link, a folder, a
    /// fifo): not followed, since the container's owner made it.
    NotAFile,
    /// Larger than asked for; not read.
    TooLarge {
        bytes: u64,
    },
    Contents(Vec<u8>),
}

/// What a container has written to disk, as the engine measures it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUse {
    /// Its writable layer: what it wrote outside its volumes and tmpfs
    /// (the root file system, when that is writable).
    pub writable_layer: u64,
    /// Its own volumes: the anonymous ones made with it and removed with it
    /// (the workspace, the report's folder).
    pub own_volumes: u64,
    /// The installation's named volumes it mounts: its user's pip cache,
    /// which outlives it and which its user's other jobs mount too.
    pub caches: u64,
}

impl DiskUse {
    /// All it can fill: a job bounded without its cache could fill the disk
    /// through the cache, which nothing else bounds.
    pub fn total(&self) -> u64 {
        self.writable_layer
            .saturating_add(self.own_volumes)
            .saturating_add(self.caches)
    }

    /// Whether its caches are to blame for its being over `limit`: it is
    /// over, and would not be without them, or they alone are over. A job
    /// ended for its disk empties a cache to blame (see `worker::end`), so
    /// that its user's next job does not find the limit reached before it
    /// starts; a small cache beside a job over on its own writes is kept.
    pub fn caches_to_blame(&self, limit: u64) -> bool {
        self.total() > limit
            && self.caches > 0
            && (self.caches > limit || self.total() - self.caches <= limit)
    }
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
    #[error("reading a file of the container: {0}")]
    ReadFile(#[source] std::io::Error),
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
    /// The images that carry `label` (whatever its value): the runner images.
    async fn list_images(&self, label: &str) -> Result<Vec<ImageInfo>>;
    /// Reads the regular file at `path` in a container, running or exited
    /// (volumes included), if it holds at most `max_bytes`.
    async fn read_file(&self, id: &str, path: &str, max_bytes: u64) -> Result<FileRead>;
    /// The id of the image `reference` names, `None` when the engine has none.
    async fn image_id(&self, reference: &str) -> Result<Option<String>>;
    /// Makes an image of a stopped container's file system (its volumes
    /// left out), tagged `reference` (`repo:tag`), with `labels` beside those it
    /// inherits; returns the image's id.
    async fn commit(
        &self,
        container_id: &str,
        reference: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<String>;
    /// Removes an image unless a container uses it.
    async fn remove_image(&self, id: &str) -> Result<Removal>;
    /// Removes a named volume unless a container (running or not) mounts it.
    async fn remove_volume(&self, name: &str) -> Result<Removal>;
    /// The bytes a named volume holds; `None` when the engine has no such
    /// volume or did not compute its size.
    async fn volume_size(&self, name: &str) -> Result<Option<u64>>;
    /// What each of the containers `ids` has written to disk, measured in one
    /// go; a container the engine no longer has is left out of the answer.
    async fn disk_use(&self, ids: &[String]) -> Result<HashMap<String, DiskUse>>;
}

/// The Docker engine, reached through `DOCKER_HOST` or the local socket.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    /// The engine refused a `storage_opt size` although its info promised
    /// a quota (overlay2 on an xfs mounted without `pquota` looks the same
    /// as one with it): containers are then created without one.
    storage_quota_refused: Arc<AtomicBool>,
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
        Ok(DockerRuntime {
            docker,
            storage_quota_refused: Arc::default(),
        })
    }

    /// Whether the engine's storage driver can bound a container's writable
    /// layer (asked once at start; see [`storage_quota_from`]).
    pub async fn has_storage_quota(&self) -> Result<bool> {
        Ok(storage_quota_from(&self.docker.info().await?))
    }
}

/// Whether the storage driver `info` names takes a `size` storage option:
/// overlay2 on xfs (which also needs the `pquota` mount option, which the
/// info does not show: an engine that then refuses the option is asked
/// without it, see `DockerRuntime::create`), btrfs and zfs. overlay2 on
/// extfs, the common case, has none.
pub fn storage_quota_from(info: &SystemInfo) -> bool {
    let backing = info.driver_status.iter().flatten().find_map(|pair| {
        matches!(pair.first().map(String::as_str), Some("Backing Filesystem"))
            .then(|| pair.get(1).cloned())
            .flatten()
    });
    match info.driver.as_deref() {
        Some("overlay2") => backing.as_deref() == Some("xfs"),
        Some("btrfs" | "zfs") => true,
        _ => false,
    }
}

/// The engine's answer when a storage option it cannot honour is asked for.
fn is_storage_quota_refusal(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { message, .. }
        if message.contains("storage-opt") || message.contains("storage opt"))
}

/// What each of `ids` wrote, from the engine's disk usage report: its
/// writable layer (`SizeRw`), the volumes it mounts that are its own (the
/// anonymous ones, which no installation labels) and those it mounts that
/// carry an installation's label (the pip cache). The engine reports -1 for
/// a size it did not compute; that counts as nothing.
fn disk_use_from(usage: &SystemDataUsageResponse, ids: &[String]) -> HashMap<String, DiskUse> {
    // By name: its size, and whether it is an installation's cache.
    let volumes: HashMap<&str, (u64, bool)> = usage
        .volumes
        .iter()
        .flatten()
        .map(|v| {
            let size = v.usage_data.as_ref().map_or(0, |u| u.size);
            let cache = v.labels.contains_key(LABEL_INSTALLATION);
            (v.name.as_str(), (u64::try_from(size).unwrap_or(0), cache))
        })
        .collect();
    usage
        .containers
        .iter()
        .flatten()
        .filter_map(|c| {
            let id = c.id.as_ref().filter(|id| ids.contains(id))?;
            let mut used = DiskUse {
                writable_layer: u64::try_from(c.size_rw.unwrap_or(0)).unwrap_or(0),
                ..DiskUse::default()
            };
            let mounted = c
                .mounts
                .iter()
                .flatten()
                .filter(|m| m.typ == Some(MountPointTypeEnum::VOLUME))
                .filter_map(|m| volumes.get(m.name.as_deref()?));
            for &(bytes, cache) in mounted {
                let part = if cache {
                    &mut used.caches
                } else {
                    &mut used.own_volumes
                };
                *part = part.saturating_add(bytes);
            }
            Some((id.clone(), used))
        })
        .collect()
}

/// A spec's volumes as the engine's mounts.
fn mounts(volumes: &[VolumeMount]) -> Vec<Mount> {
    volumes
        .iter()
        .map(
            |VolumeMount {
                 name,
                 target,
                 labels,
             }| Mount {
                typ: Some(MountTypeEnum::VOLUME),
                source: name.clone(),
                target: Some(target.clone()),
                volume_options: (!labels.is_empty()).then(|| MountVolumeOptions {
                    labels: Some(labels.clone().into_iter().collect()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .collect()
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
        // Whole, so that a field added to the spec cannot be forgotten here.
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
        let storage_size =
            storage_size_bytes.filter(|_| !self.storage_quota_refused.load(Ordering::Relaxed));
        let mut host_config = HostConfig {
            network_mode: Some(network_mode.clone()),
            memory: *memory_bytes,
            memory_swap: *memory_swap_bytes,
            pids_limit: *pids_limit,
            cpu_shares: *cpu_shares,
            cap_drop: (!cap_drop.is_empty()).then(|| cap_drop.clone()),
            security_opt: (!security_opt.is_empty()).then(|| security_opt.clone()),
            mounts: Some(mounts(volumes)),
            readonly_rootfs: Some(*read_only_rootfs),
            log_config: log_driver.as_ref().map(|driver| HostConfigLogConfig {
                typ: Some(driver.clone()),
                config: None,
            }),
            tmpfs: (!tmpfs.is_empty()).then(|| tmpfs.iter().cloned().collect()),
            storage_opt: storage_size
                .map(|bytes| HashMap::from([("size".to_string(), bytes.to_string())])),
            ..Default::default()
        };
        let mut config = Config {
            image: Some(image.clone()),
            cmd: Some(cmd.clone()),
            labels: Some(labels.clone().into_iter().collect()),
            user: Some(user.clone()),
            working_dir: Some(working_dir.clone()),
            env: (!env.is_empty()).then(|| env.clone()),
            tty: Some(false),
            // The job reads its workspace from standard input (see
            // `start_with_input`): one stream, no copy into the file system.
            open_stdin: Some(*stdin_once),
            stdin_once: Some(*stdin_once),
            attach_stdin: Some(*stdin_once),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            network_disabled: Some(network_mode == "none"),
            host_config: Some(host_config.clone()),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: name.as_str(),
            platform: None,
        };
        let mut created = self
            .docker
            .create_container(Some(options.clone()), config.clone())
            .await;
        if let Err(e) = &created {
            if storage_size.is_some() && is_storage_quota_refusal(e) {
                tracing::warn!(error = %e, "the engine has no storage quota after all; jobs' disk use is bounded by measuring it alone");
                self.storage_quota_refused.store(true, Ordering::Relaxed);
                host_config.storage_opt = None;
                config.host_config = Some(host_config);
                created = self.docker.create_container(Some(options), config).await;
            }
        }
        match created {
            Ok(created) => Ok(created.id),
            Err(e) if is_status(&e, 404) => Err(RuntimeError::ImageMissing(image.clone())),
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

    async fn list_images(&self, label: &str) -> Result<Vec<ImageInfo>> {
        let options = ListImagesOptions::<String> {
            filters: HashMap::from([("label".to_string(), vec![label.to_string()])]),
            ..Default::default()
        };
        let images = self.docker.list_images(Some(options)).await?;
        Ok(images
            .into_iter()
            .map(|image| ImageInfo {
                id: image.id,
                tags: image
                    .repo_tags
                    .into_iter()
                    .filter(|t| t != "<none>:<none>")
                    .collect(),
                labels: image.labels,
                created: image.created,
                size: u64::try_from(image.size).unwrap_or(0),
            })
            .collect())
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
                let job_id = labels.get(LABEL_JOB).and_then(|j| j.parse().ok());
                Some(ContainerInfo {
                    id: c.id?,
                    preparation: job_id
                        .is_none()
                        .then(|| labels.get(LABEL_PREPARATION).cloned())
                        .flatten(),
                    job_id,
                    running: c.state.as_deref() == Some("running"),
                })
            })
            .collect())
    }

    async fn read_file(&self, id: &str, path: &str, max_bytes: u64) -> Result<FileRead> {
        let options = DownloadFromContainerOptions { path };
        let chunks = self
            .docker
            .download_from_container(id, Some(options))
            .map(|chunk| chunk.map_err(RuntimeError::from))
            .boxed();
        match file_from_tar(chunks, max_bytes).await {
            Err(RuntimeError::Docker(e)) if is_status(&e, 404) => Ok(FileRead::Missing),
            other => other,
        }
    }

    async fn image_id(&self, reference: &str) -> Result<Option<String>> {
        match self.docker.inspect_image(reference).await {
            Ok(image) => Ok(image.id),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn commit(
        &self,
        container_id: &str,
        reference: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<String> {
        let (repo, tag) = reference.rsplit_once(':').unwrap_or((reference, "latest"));
        let options = CommitContainerOptions {
            container: container_id,
            repo,
            tag,
            comment: "",
            author: "ci-controller",
            // The container has exited; nothing to pause.
            pause: false,
            changes: None,
        };
        let config = Config {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<String, String>>(),
            ),
            ..Default::default()
        };
        match self.docker.commit_container(options, config).await {
            // bollard reads the answer's `Id` as `ID` (and finds none): the
            // image is looked up by the tag it was just given.
            Ok(_) => self
                .image_id(reference)
                .await?
                .ok_or_else(|| RuntimeError::ImageMissing(reference.to_string())),
            Err(e) if is_status(&e, 404) => Err(RuntimeError::NotFound(container_id.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    async fn remove_image(&self, id: &str) -> Result<Removal> {
        let options = RemoveImageOptions {
            force: false,
            noprune: false,
        };
        match self.docker.remove_image(id, Some(options), None).await {
            Ok(_) => Ok(Removal::Removed),
            // 409: a container uses it (or it has other tags).
            Err(e) if is_status(&e, 409) => Ok(Removal::InUse),
            Err(e) if is_status(&e, 404) => Ok(Removal::Missing),
            Err(e) => Err(e.into()),
        }
    }

    async fn remove_volume(&self, name: &str) -> Result<Removal> {
        // Not forced: the engine refuses (409) while a container mounts it.
        match self
            .docker
            .remove_volume(name, Some(RemoveVolumeOptions { force: false }))
            .await
        {
            Ok(()) => Ok(Removal::Removed),
            Err(e) if is_status(&e, 409) => Ok(Removal::InUse),
            Err(e) if is_status(&e, 404) => Ok(Removal::Missing),
            Err(e) => Err(e.into()),
        }
    }

    /// From the engine's disk usage report, which walks every volume (see
    /// `disk_use`): asked for once per eviction round.
    async fn volume_size(&self, name: &str) -> Result<Option<u64>> {
        let usage = self.docker.df().await?;
        Ok(usage
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .and_then(|v| v.usage_data.as_ref())
            .and_then(|u| u64::try_from(u.size).ok()))
    }

    /// One disk usage report for all of them. The engine of API 1.41 (and
    /// bollard 0.18's `df`) takes no type filter, so the report covers every
    /// container, image and volume of the engine: it is asked for once per
    /// round, never once per container (see BENCHMARKS.md for its cost).
    async fn disk_use(&self, ids: &[String]) -> Result<HashMap<String, DiskUse>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let usage = self.docker.df().await?;
        Ok(disk_use_from(&usage, ids))
    }
}

/// The one file of a tar stream as the engine's archive API sends it, read
/// from `chunks` no further than `max_bytes` of content (plus the tar
/// framing): the entry's header, which comes first, says its size.
async fn file_from_tar(
    mut chunks: BoxStream<'_, Result<Bytes>>,
    max_bytes: u64,
) -> Result<FileRead> {
    /// Header blocks, long-name entries and padding beside the content.
    const TAR_FRAMING: u64 = 64 * 1024;
    let mut tar = Vec::new();
    while let Some(chunk) = chunks.next().await {
        tar.extend_from_slice(&chunk?);
        if tar.len() >= 512 {
            let header = tar::Header::from_byte_slice(&tar[..512]);
            if !matches!(
                header.entry_type(),
                tar::EntryType::Regular | tar::EntryType::GNULongName | tar::EntryType::XHeader
            ) {
                return Ok(FileRead::NotAFile);
            }
            if let Ok(size) = header.size() {
                if header.entry_type() == tar::EntryType::Regular && size > max_bytes {
                    return Ok(FileRead::TooLarge { bytes: size });
                }
            }
        }
        if tar.len() as u64 > max_bytes + TAR_FRAMING {
            return Ok(FileRead::TooLarge {
                bytes: tar.len() as u64,
            });
        }
    }
    let mut archive = tar::Archive::new(tar.as_slice());
    let entries = archive.entries().map_err(RuntimeError::ReadFile)?;
    // The archive of one path holds that one entry.
    let Some(entry) = entries.into_iter().next() else {
        return Ok(FileRead::Missing);
    };
    let mut entry = entry.map_err(RuntimeError::ReadFile)?;
    if entry.header().entry_type() != tar::EntryType::Regular {
        return Ok(FileRead::NotAFile);
    }
    let size = entry.header().size().map_err(RuntimeError::ReadFile)?;
    if size > max_bytes {
        return Ok(FileRead::TooLarge { bytes: size });
    }
    let mut contents = Vec::with_capacity(size as usize);
    std::io::Read::read_to_end(&mut entry, &mut contents).map_err(RuntimeError::ReadFile)?;
    Ok(FileRead::Contents(contents))
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

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, contents) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(contents.len() as u64);
            header.set_mode(0o644);
            if *kind == tar::EntryType::Symlink {
                header.set_size(0);
                header.set_link_name("/etc/shadow").expect("link name");
                builder
                    .append_data(&mut header, name, std::io::empty())
                    .expect("append");
            } else {
                builder
                    .append_data(&mut header, name, *contents)
                    .expect("append");
            }
        }
        builder.into_inner().expect("tar")
    }

    async fn read(tar: Vec<u8>, max_bytes: u64) -> FileRead {
        // In small chunks, as the engine streams it.
        let chunks: Vec<Result<Bytes>> = tar
            .chunks(700)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        file_from_tar(futures::stream::iter(chunks).boxed(), max_bytes)
            .await
            .expect("read")
    }

    #[tokio::test]
    async fn one_regular_file_is_read_from_the_archive_stream_within_its_limit() {
        let report = b"<testsuites/>".repeat(100);
        let tar = tar_of(&[("junit.xml", tar::EntryType::Regular, &report)]);
        assert_eq!(read(tar.clone(), 1300).await, FileRead::Contents(report));
        assert_eq!(read(tar, 1299).await, FileRead::TooLarge { bytes: 1300 });
        let link = tar_of(&[("junit.xml", tar::EntryType::Symlink, b"")]);
        assert_eq!(read(link, 1300).await, FileRead::NotAFile);
        assert_eq!(read(Vec::new(), 10).await, FileRead::Missing);
    }

    fn info(driver: &str, backing: &str) -> SystemInfo {
        SystemInfo {
            driver: Some(driver.to_string()),
            driver_status: Some(vec![
                vec!["Backing Filesystem".into(), backing.into()],
                vec!["Supports d_type".into(), "true".into()],
            ]),
            ..Default::default()
        }
    }

    /// The engine here is overlay2 on extfs, which has no quota: the other
    /// rows cannot be tried live on this machine.
    #[test]
    fn a_storage_quota_is_used_only_where_the_driver_has_one() {
        assert!(!storage_quota_from(&info("overlay2", "extfs")));
        assert!(storage_quota_from(&info("overlay2", "xfs")));
        assert!(storage_quota_from(&info("zfs", "zfs")));
        assert!(storage_quota_from(&info("btrfs", "btrfs")));
        assert!(!storage_quota_from(&info("vfs", "xfs")));
        assert!(!storage_quota_from(&SystemInfo::default()));
        let refusal = bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message:
                "--storage-opt is supported only for overlay over xfs with 'pquota' mount option"
                    .into(),
        };
        assert!(is_storage_quota_refusal(&refusal));
        let other = bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: "no space left on device".into(),
        };
        assert!(!is_storage_quota_refusal(&other));
    }

    #[test]
    fn a_containers_disk_use_is_its_layer_its_own_volumes_and_its_cache() {
        use bollard::models::{ContainerSummary, MountPoint, Volume, VolumeUsageData};
        let volume = |name: &str, size: i64, labels: &[(&str, &str)]| Volume {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            usage_data: Some(VolumeUsageData { size, ref_count: 1 }),
            ..Default::default()
        };
        let mount = |name: &str| MountPoint {
            typ: Some(MountPointTypeEnum::VOLUME),
            name: Some(name.into()),
            ..Default::default()
        };
        let usage = SystemDataUsageResponse {
            containers: Some(vec![
                ContainerSummary {
                    id: Some("job".into()),
                    size_rw: Some(1000),
                    mounts: Some(vec![mount("workspace"), mount("report"), mount("pip")]),
                    ..Default::default()
                },
                ContainerSummary {
                    id: Some("not-asked".into()),
                    size_rw: Some(5),
                    ..Default::default()
                },
                ContainerSummary {
                    id: Some("uncounted".into()),
                    size_rw: Some(-1),
                    mounts: Some(vec![mount("uncomputed")]),
                    ..Default::default()
                },
            ]),
            volumes: Some(vec![
                volume("workspace", 200, &[]),
                volume("report", 30, &[]),
                // The user's pip cache, shared between their jobs.
                volume("pip", 1 << 30, &[(LABEL_INSTALLATION, "p-")]),
                volume("uncomputed", -1, &[]),
            ]),
            ..Default::default()
        };
        let ids = ["job".to_string(), "uncounted".into(), "gone".into()];
        let measured = disk_use_from(&usage, &ids);
        assert_eq!(measured.len(), 2, "{measured:?}");
        assert_eq!(
            measured["job"],
            DiskUse {
                writable_layer: 1000,
                own_volumes: 230,
                caches: 1 << 30,
            }
        );
        assert_eq!(measured["job"].total(), 1230 + (1 << 30));
        assert_eq!(measured["uncounted"], DiskUse::default());
    }

    #[test]
    fn a_cache_is_to_blame_when_the_job_is_within_the_limit_without_it_or_it_is_over_alone() {
        let used = |own: u64, caches: u64| DiskUse {
            writable_layer: 0,
            own_volumes: own,
            caches,
        };
        assert!(used(10, 95).caches_to_blame(100));
        assert!(used(100, 1).caches_to_blame(100));
        assert!(used(150, 101).caches_to_blame(100), "the cache over alone");
        assert!(
            !used(101, 50).caches_to_blame(100),
            "small beside a job over"
        );
        assert!(!used(40, 60).caches_to_blame(100), "not over");
        assert!(!used(101, 0).caches_to_blame(100), "no cache");
    }

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
