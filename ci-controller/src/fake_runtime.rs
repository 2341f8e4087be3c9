//! A container runtime in memory, so that the reconciler's rules (adoption,
//! the orphan sweep, cancellation, time limits, lost containers, capacity)
//! are tested pass by pass without a Docker engine, as kube-rs's
//! `controller-rs` tests its reconciler against a fake API.
//!
//! A test plays the job's part: it reads what the controller asked for
//! ([`FakeRuntime::container_of`]), prints ([`FakeRuntime::print`]) and exits
//! ([`FakeRuntime::exit`]), or plays the engine's (containers that vanish,
//! containers left from before).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use ci_common::JobId;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::{oneshot, watch};

use crate::runtime::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerState, DiskUse, FileRead, ImageInfo,
    InputStream, LogLine, Removal, Result, RuntimeError, LABEL_INSTALLATION, LABEL_JOB,
    LABEL_PREPARATION,
};

/// One container, as the fake engine keeps it.
#[derive(Debug, Clone)]
pub struct FakeContainer {
    pub id: String,
    pub spec: ContainerSpec,
    pub running: bool,
    pub exit_code: Option<i64>,
    /// What was written to its standard input.
    pub input: Option<Vec<u8>>,
    pub output: Vec<LogLine>,
    /// Files the job wrote, by path (its test report).
    pub files: BTreeMap<String, Vec<u8>>,
    /// What the engine measures it has written to disk.
    pub disk_use: DiskUse,
}

#[derive(Default)]
struct Engine {
    images: HashSet<String>,
    /// Images as `list_images` shows them (runner images with labels).
    listed_images: Vec<ImageInfo>,
    containers: BTreeMap<String, FakeContainer>,
    next_id: u64,
    /// The most containers that ran at once.
    max_running: usize,
    /// Containers created through the runtime, ever.
    created: usize,
    /// Images committed from containers, ever.
    commits: usize,
    /// The size a committed image gets.
    commit_size: u64,
    /// The next image listing with this label is held, once it has read
    /// the engine.
    listing_gate: Option<(String, HeldCall)>,
    /// The next image removal is held, before it changes the engine.
    removal_gate: Option<HeldCall>,
    /// Measuring disk use fails, as when the engine does not answer.
    disk_use_fails: bool,
    /// Disk use measurements asked for, ever.
    disk_measurements: usize,
    /// Named volumes asked to be removed, in order, with what became of them.
    volume_removals: Vec<(String, Removal)>,
    /// What the engine measures named volumes to hold.
    volume_sizes: HashMap<String, u64>,
}

/// The engine's side of a [`Gate`].
struct HeldCall {
    reached: watch::Sender<bool>,
    release: oneshot::Receiver<()>,
}

impl HeldCall {
    async fn hold(self) {
        self.reached.send_replace(true);
        // A gate dropped without a release lets the call go too.
        let _ = self.release.await;
    }
}

/// A runtime call a test holds at a point of its choosing, so that another
/// step runs exactly in between (a race made deterministic). Dropping the
/// gate releases the call.
pub struct Gate {
    reached: watch::Receiver<bool>,
    release: Option<oneshot::Sender<()>>,
}

impl Gate {
    fn new() -> (Gate, HeldCall) {
        let (reached_tx, reached) = watch::channel(false);
        let (release, release_rx) = oneshot::channel();
        let gate = Gate {
            reached,
            release: Some(release),
        };
        let held = HeldCall {
            reached: reached_tx,
            release: release_rx,
        };
        (gate, held)
    }

    /// Waits until the held call is at the gate, failing the test after
    /// [`PATIENCE`].
    pub async fn reached(&mut self) {
        let reached = tokio::time::timeout(PATIENCE, self.reached.wait_for(|at| *at)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "timed out waiting for the held call"
        );
    }

    /// Lets the held call go on.
    pub fn release(mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
    }
}

impl Engine {
    /// A new container, created, not started.
    fn add(&mut self, spec: ContainerSpec) -> String {
        self.next_id += 1;
        let id = format!("fake-{}", self.next_id);
        self.containers.insert(
            id.clone(),
            FakeContainer {
                id: id.clone(),
                spec,
                running: false,
                exit_code: None,
                input: None,
                output: Vec::new(),
                files: BTreeMap::new(),
                disk_use: DiskUse::default(),
            },
        );
        id
    }

    fn running(&self) -> usize {
        self.containers.values().filter(|c| c.running).count()
    }
}

/// An engine in memory. Cloning shares it.
#[derive(Clone)]
pub struct FakeRuntime {
    engine: Arc<Mutex<Engine>>,
    /// Bumped on every change, so followers and tests wait for changes
    /// instead of polling.
    changed: Arc<watch::Sender<u64>>,
}

/// How long a test waits for the controller to act before failing.
pub const PATIENCE: Duration = Duration::from_secs(10);

impl FakeRuntime {
    /// An engine that has `image` and no containers.
    pub fn with_image(image: &str) -> Self {
        let engine = Engine {
            images: HashSet::from([image.to_string()]),
            ..Engine::default()
        };
        FakeRuntime {
            engine: Arc::new(Mutex::new(engine)),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    /// Adds an image that `list_images` shows, as `scripts/runner-image.sh`
    /// would build it.
    pub fn add_image(&self, info: ImageInfo) {
        self.change(|e| {
            e.images.extend(info.tags.iter().cloned());
            e.images.insert(info.id.clone());
            e.listed_images.push(info);
        });
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the engine and tells everyone waiting.
    fn change<T>(&self, f: impl FnOnce(&mut Engine) -> T) -> T {
        let out = {
            let mut engine = self.engine();
            let out = f(&mut engine);
            engine.max_running = engine.max_running.max(engine.running());
            out
        };
        self.changed.send_modify(|v| *v += 1);
        out
    }

    /// Waits until `cond` holds of the engine, failing the test after [`PATIENCE`].
    pub async fn until<T>(&self, what: &str, cond: impl Fn(&FakeRuntime) -> Option<T>) -> T {
        let mut changes = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            changes.borrow_and_update();
            if let Some(found) = cond(self) {
                return found;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!("timed out waiting for {what}"),
            }
        }
    }

    /// The container the controller made for `job`, if any.
    pub fn container_of(&self, job: JobId) -> Option<FakeContainer> {
        let job = job.to_string();
        self.engine()
            .containers
            .values()
            .find(|c| c.spec.labels.get(LABEL_JOB) == Some(&job))
            .cloned()
    }

    pub fn container(&self, id: &str) -> Option<FakeContainer> {
        self.engine().containers.get(id).cloned()
    }

    pub fn max_running(&self) -> usize {
        self.engine().max_running
    }

    pub fn created(&self) -> usize {
        self.engine().created
    }

    /// Images committed from containers, ever.
    pub fn commits(&self) -> usize {
        self.engine().commits
    }

    /// The size the next committed images get.
    pub fn set_commit_size(&self, bytes: u64) {
        self.change(|e| e.commit_size = bytes);
    }

    /// Holds the next `list_images(label)` after it has read the engine:
    /// its caller gets what was listed before the gate, only once released.
    pub fn hold_next_image_listing(&self, label: &str) -> Gate {
        let (gate, held) = Gate::new();
        self.engine().listing_gate = Some((label.to_string(), held));
        gate
    }

    /// Holds the next `remove_image` before it removes anything.
    pub fn hold_next_image_removal(&self) -> Gate {
        let (gate, held) = Gate::new();
        self.engine().removal_gate = Some(held);
        gate
    }

    /// The images `list_images` would show with `label`.
    pub fn images_labelled(&self, label: &str) -> Vec<ImageInfo> {
        self.engine()
            .listed_images
            .iter()
            .filter(|i| i.labels.contains_key(label))
            .cloned()
            .collect()
    }

    /// The containers whose label `label` is set.
    pub fn containers_labelled(&self, label: &str) -> Vec<FakeContainer> {
        self.engine()
            .containers
            .values()
            .filter(|c| c.spec.labels.contains_key(label))
            .cloned()
            .collect()
    }

    /// A container that is there without this controller having made it
    /// (left by an earlier one, or by another installation).
    pub fn plant(&self, spec: ContainerSpec, running: bool) -> String {
        self.change(|e| {
            let id = e.add(spec);
            if let Some(c) = e.containers.get_mut(&id) {
                c.running = running;
                c.exit_code = (!running).then_some(0);
            }
            id
        })
    }

    /// The container prints `text` (as one log frame).
    pub fn print(&self, id: &str, text: &str) {
        self.change(|e| {
            if let Some(c) = e.containers.get_mut(id) {
                c.output.push(LogLine {
                    timestamp: next_timestamp(c.output.last()),
                    bytes: Bytes::from(text.to_string()),
                });
            }
        });
    }

    /// The container's process writes `contents` to `path`.
    pub fn write_file(&self, id: &str, path: &str, contents: &[u8]) {
        self.change(|e| {
            if let Some(c) = e.containers.get_mut(id) {
                c.files.insert(path.to_string(), contents.to_vec());
            }
        });
    }

    /// The container has written `used` to disk, as the engine would measure it.
    pub fn set_disk_use(&self, id: &str, used: DiskUse) {
        self.change(|e| {
            if let Some(c) = e.containers.get_mut(id) {
                c.disk_use = used;
            }
        });
    }

    /// The engine measures the named volume `name` to hold `bytes` (until
    /// it is removed).
    pub fn set_volume_size(&self, name: &str, bytes: u64) {
        self.engine().volume_sizes.insert(name.to_string(), bytes);
    }

    /// The named volumes asked to be removed so far, in order, with what
    /// became of them (a mounted one is kept).
    pub fn volume_removals(&self) -> Vec<(String, Removal)> {
        self.engine().volume_removals.clone()
    }

    /// From now on measuring disk use fails (`true`) or works again.
    pub fn fail_disk_use(&self, fails: bool) {
        self.change(|e| e.disk_use_fails = fails);
    }

    /// Disk use measurements asked for, ever (failed ones too).
    pub fn disk_measurements(&self) -> usize {
        self.engine().disk_measurements
    }

    /// The container's process exits with `code`.
    pub fn exit(&self, id: &str, code: i64) {
        self.change(|e| {
            if let Some(c) = e.containers.get_mut(id) {
                c.running = false;
                c.exit_code = Some(code);
            }
        });
    }

    /// The container is gone, as after an engine restart or a `docker rm`.
    pub fn vanish(&self, id: &str) {
        self.change(|e| e.containers.remove(id));
    }
}

/// Docker-style RFC 3339 nanosecond timestamps, strictly after the last line's.
fn next_timestamp(last: Option<&LogLine>) -> String {
    let mut now = Utc::now();
    if let Some(last) = last.and_then(|l| chrono::DateTime::parse_from_rfc3339(&l.timestamp).ok()) {
        let after = last.with_timezone(&Utc) + chrono::Duration::nanoseconds(1);
        now = now.max(after);
    }
    now.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn image_exists(&self, image: &str) -> Result<bool> {
        Ok(self.engine().images.contains(image))
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        self.change(|e| {
            if !e.images.contains(&spec.image) {
                return Err(RuntimeError::ImageMissing(spec.image.clone()));
            }
            e.created += 1;
            let id = e.add(spec.clone());
            Ok(id)
        })
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.change(|e| match e.containers.get_mut(id) {
            Some(c) => {
                c.running = true;
                Ok(())
            }
            None => Err(RuntimeError::NotFound(id.to_string())),
        })
    }

    async fn start_with_input(&self, id: &str, mut stream: InputStream) -> Result<()> {
        // Read whole, as the engine would before the job's script sees EOF.
        let mut input = Vec::new();
        while let Some(chunk) = stream.next().await {
            input.extend_from_slice(&chunk?);
        }
        self.change(|e| match e.containers.get_mut(id) {
            Some(c) => {
                c.running = true;
                c.input = Some(input);
                Ok(())
            }
            None => Err(RuntimeError::NotFound(id.to_string())),
        })
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerState>> {
        Ok(self.engine().containers.get(id).map(|c| ContainerState {
            running: c.running,
            exit_code: c.exit_code,
            oom_killed: false,
        }))
    }

    fn logs(&self, id: &str, since_secs: Option<i64>) -> BoxStream<'static, Result<LogLine>> {
        struct Follow {
            runtime: FakeRuntime,
            id: String,
            next: usize,
            changes: watch::Receiver<u64>,
            over: bool,
        }
        let follow = Follow {
            runtime: self.clone(),
            id: id.to_string(),
            next: 0,
            changes: self.changed.subscribe(),
            over: false,
        };
        futures::stream::unfold(follow, move |mut f| async move {
            if f.over {
                return None;
            }
            enum Step {
                Line(LogLine),
                Gone,
                Exited,
                Wait,
            }
            loop {
                f.changes.borrow_and_update();
                let step = {
                    let engine = f.runtime.engine();
                    match engine.containers.get(&f.id) {
                        None => Step::Gone,
                        Some(c) => {
                            // Like Docker: from the whole second `since_secs` on.
                            while let Some(line) = c.output.get(f.next) {
                                let secs = chrono::DateTime::parse_from_rfc3339(&line.timestamp)
                                    .map(|t| t.timestamp())
                                    .unwrap_or(0);
                                if since_secs.is_some_and(|since| secs < since) {
                                    f.next += 1;
                                } else {
                                    break;
                                }
                            }
                            match c.output.get(f.next) {
                                Some(line) => Step::Line(line.clone()),
                                None if c.running => Step::Wait,
                                None => Step::Exited,
                            }
                        }
                    }
                };
                match step {
                    Step::Line(line) => {
                        f.next += 1;
                        return Some((Ok(line), f));
                    }
                    // Docker answers 404 for a container that is not there;
                    // one followed to its removal just ends.
                    Step::Gone if f.next == 0 => {
                        f.over = true;
                        let gone = RuntimeError::NotFound(f.id.clone());
                        return Some((Err(gone), f));
                    }
                    Step::Gone | Step::Exited => return None,
                    Step::Wait => {
                        if f.changes.changed().await.is_err() {
                            return None;
                        }
                    }
                }
            }
        })
        .boxed()
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<()> {
        self.change(|e| {
            if let Some(c) = e.containers.get_mut(id) {
                if c.running {
                    c.running = false;
                    c.exit_code = Some(137);
                }
            }
        });
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.change(|e| e.containers.remove(id));
        Ok(())
    }

    async fn list_images(&self, label: &str) -> Result<Vec<ImageInfo>> {
        let (listed, held) = {
            let mut engine = self.engine();
            let listed: Vec<ImageInfo> = engine
                .listed_images
                .iter()
                .filter(|i| i.labels.contains_key(label))
                .cloned()
                .collect();
            let held = match engine.listing_gate.take() {
                Some((gated, held)) if gated == label => Some(held),
                other => {
                    engine.listing_gate = other;
                    None
                }
            };
            (listed, held)
        };
        if let Some(held) = held {
            held.hold().await;
        }
        Ok(listed)
    }

    async fn read_file(&self, id: &str, path: &str, max_bytes: u64) -> Result<FileRead> {
        let engine = self.engine();
        let file = engine.containers.get(id).and_then(|c| c.files.get(path));
        Ok(match file {
            None => FileRead::Missing,
            Some(contents) if contents.len() as u64 > max_bytes => FileRead::TooLarge {
                bytes: contents.len() as u64,
            },
            Some(contents) => FileRead::Contents(contents.clone()),
        })
    }

    async fn image_id(&self, reference: &str) -> Result<Option<String>> {
        let engine = self.engine();
        let listed = engine
            .listed_images
            .iter()
            .find(|i| i.id == reference || i.tags.iter().any(|t| t == reference));
        Ok(match listed {
            Some(image) => Some(image.id.clone()),
            None => engine
                .images
                .contains(reference)
                .then(|| reference.to_string()),
        })
    }

    async fn commit(
        &self,
        container_id: &str,
        reference: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<String> {
        self.change(|e| {
            let container = e
                .containers
                .get(container_id)
                .ok_or_else(|| RuntimeError::NotFound(container_id.to_string()))?;
            // As the engine does: the container's labels (and through them
            // its image's), then the ones asked for.
            let mut all: std::collections::HashMap<String, String> = e
                .listed_images
                .iter()
                .find(|i| i.id == container.spec.image || i.tags.contains(&container.spec.image))
                .map(|i| i.labels.clone())
                .unwrap_or_default();
            all.extend(container.spec.labels.clone());
            all.extend(labels.clone());
            e.commits += 1;
            let id = format!("sha256:fake-image-{}", e.commits);
            // The tag moves to the new image.
            for image in &mut e.listed_images {
                image.tags.retain(|t| t != reference);
            }
            e.listed_images.push(ImageInfo {
                id: id.clone(),
                tags: vec![reference.to_string()],
                labels: all,
                created: Utc::now().timestamp(),
                size: e.commit_size,
            });
            e.images.insert(id.clone());
            Ok(id)
        })
    }

    async fn remove_image(&self, id: &str) -> Result<Removal> {
        let held = self.engine().removal_gate.take();
        if let Some(held) = held {
            held.hold().await;
        }
        Ok(self.change(|e| {
            if e.containers.values().any(|c| c.spec.image == id) {
                return Removal::InUse;
            }
            let before = e.listed_images.len();
            e.listed_images.retain(|i| i.id != id);
            e.images.remove(id);
            if e.listed_images.len() < before {
                Removal::Removed
            } else {
                Removal::Missing
            }
        }))
    }

    async fn remove_volume(&self, name: &str) -> Result<Removal> {
        Ok(self.change(|e| {
            let mounted = e.containers.values().any(|c| {
                c.spec
                    .volumes
                    .iter()
                    .any(|v| v.name.as_deref() == Some(name))
            });
            let removal = if mounted {
                Removal::InUse
            } else {
                e.volume_sizes.remove(name);
                Removal::Removed
            };
            e.volume_removals.push((name.to_string(), removal));
            removal
        }))
    }

    async fn volume_size(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.engine().volume_sizes.get(name).copied())
    }

    async fn disk_use(&self, ids: &[String]) -> Result<HashMap<String, DiskUse>> {
        self.change(|e| {
            e.disk_measurements += 1;
            if e.disk_use_fails {
                return Err(RuntimeError::NotFound(
                    "the engine's disk usage".to_string(),
                ));
            }
            Ok(ids
                .iter()
                .filter_map(|id| e.containers.get(id).map(|c| (id.clone(), c.disk_use)))
                .collect())
        })
    }

    async fn list(&self, installation: &str) -> Result<Vec<ContainerInfo>> {
        Ok(self
            .engine()
            .containers
            .values()
            .filter(|c| {
                c.spec.labels.get(LABEL_INSTALLATION).map(String::as_str) == Some(installation)
            })
            .map(|c| {
                let job_id = c.spec.labels.get(LABEL_JOB).and_then(|j| j.parse().ok());
                ContainerInfo {
                    id: c.id.clone(),
                    preparation: job_id
                        .is_none()
                        .then(|| c.spec.labels.get(LABEL_PREPARATION).cloned())
                        .flatten(),
                    job_id,
                    running: c.running,
                }
            })
            .collect())
    }
}
