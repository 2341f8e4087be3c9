//! Starting the workspace's real binaries.
//!
//! Every child gets none of the `CI_*` settings of whoever runs the tests
//! (they would point a test at the wrong database, server or key, or change
//! a limit it relies on): [`scrub_ci_env`] removes every variable with that
//! prefix, whatever its name, and the caller then sets what the test wants.
//!
//! Children die with the test process: they are started through `setpriv
//! --pdeathsig KILL`, which ties them to the thread that started them, so
//! start processes from the test's own thread, not from a helper thread that
//! ends earlier.
//!
//! A service announces where it listens as its first line on stdout
//! (`Listening on http://ADDR` from `ci-server`, `Metrics on http://ADDR` from
//! `ci-controller`): a start-up protocol, unlike the wording of its log on
//! stderr, which goes to a file for failure messages only.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::KitError;

/// What `ci-server` prints first on stdout: its address follows.
pub const SERVER_ANNOUNCEMENT: &str = "Listening on ";
/// What `ci-controller` prints first on stdout when its status listener is
/// on: the listener's address follows.
pub const CONTROLLER_ANNOUNCEMENT: &str = "Metrics on ";
/// The prefix of every setting of the service's binaries.
const SETTINGS_PREFIX: &str = "CI_";
/// How much of a service log is shown when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// The folder holding the workspace's binaries: next to the test executable
/// (`target/debug/deps/<test>` → `target/debug`), or `CI_TESTS_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CI_TESTS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| panic!("cannot find the test executable's path: {e}"));
    let mut dir = exe
        .parent()
        .unwrap_or_else(|| panic!("the test executable {} has no folder", exe.display()))
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of one of the workspace's binaries (`ci`, `ci-admin`,
/// `ci-server`, `ci-controller`); fails the test when it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "the `{name}` binary is missing at {}: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    path
}

/// `setpriv`, when the machine has it (util-linux, essential on Debian).
fn setpriv() -> Option<&'static Path> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            ["/usr/bin/setpriv", "/bin/setpriv"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
        .as_deref()
}

/// A command for `program` that dies with the test process, with no `CI_*`
/// variable inherited and stdin closed.
pub fn command(program: &Path) -> Command {
    let mut cmd = match setpriv() {
        Some(setpriv) => {
            let mut cmd = Command::new(setpriv);
            cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
            cmd
        }
        None => Command::new(program),
    };
    scrub_ci_env(&mut cmd);
    cmd.stdin(Stdio::null());
    cmd
}

/// Removes from `cmd` every `CI_*` variable of this process's environment.
/// Call it before setting the ones the child should see.
pub fn scrub_ci_env(cmd: &mut Command) {
    scrub_ci_env_of(cmd, std::env::vars_os().map(|(name, _)| name));
}

/// [`scrub_ci_env`] for an environment given by its variables' names.
pub fn scrub_ci_env_of(cmd: &mut Command, names: impl IntoIterator<Item = OsString>) {
    for name in names {
        if name.to_string_lossy().starts_with(SETTINGS_PREFIX) {
            cmd.env_remove(name);
        }
    }
}

/// The address in an announcement line: `line` is `<announcement>http://…`.
pub fn announced_url(line: &str, announcement: &str) -> Option<String> {
    let url = line.trim().strip_prefix(announcement)?.trim();
    url.starts_with("http://")
        .then(|| url.trim_end_matches('/').to_string())
}

/// The port of `http://host:port`.
pub fn port_of(url: &str) -> Option<u16> {
    url.trim_end_matches('/').rsplit(':').next()?.parse().ok()
}

/// A running service whose stderr (its log) goes to a file. Killed on drop.
#[derive(Debug)]
pub struct Service {
    /// `server`, `replica-1`, `controller`, … for messages.
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Starts `cmd` with its stderr written to `log` and its stdout dropped.
    pub fn start(name: &str, cmd: &mut Command, log: &Path) -> Result<Service, KitError> {
        let log_file = File::create(log).map_err(KitError::io(format!(
            "cannot create the log {}",
            log.display()
        )))?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|source| KitError::Spawn {
                program: describe(cmd),
                source,
            })?;
        Ok(Service {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// Starts `cmd` with its stderr written to `log`, and waits for its first
    /// stdout line `<announcement>http://ADDR`; the service and that URL.
    /// Stdout is drained afterwards so the service never blocks on a full
    /// pipe. Fails when it exits first or says nothing within `within`.
    pub fn start_announcing(
        name: &str,
        cmd: &mut Command,
        log: &Path,
        announcement: &str,
        within: Duration,
    ) -> Result<(Service, String), KitError> {
        let log_file = File::create(log).map_err(KitError::io(format!(
            "cannot create the log {}",
            log.display()
        )))?;
        let program = describe(cmd);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|source| KitError::Spawn {
                program: program.clone(),
                source,
            })?;
        let (tx, rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            let announcement = announcement.to_string();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(url) = announced_url(&line, &announcement) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(url);
                        }
                    }
                }
            });
        }
        let mut service = Service {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        };
        match rx.recv_timeout(within) {
            Ok(url) => Ok((service, url)),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                service.kill();
                Err(KitError::ExitedBeforeAnnouncing {
                    program,
                    announcement: announcement.to_string(),
                    log: service.log_tail(),
                })
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                service.kill();
                Err(KitError::NoAnnouncement {
                    program,
                    announcement: announcement.to_string(),
                    within,
                    log: service.log_tail(),
                })
            }
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    /// Whether the process is still alive (it has not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: no goodbye to its clients, no lease released.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as a service manager stops it; waits up to `grace` for it to
    /// exit, then kills it. Whether it exited by itself.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let _ = signal::kill(self.pid(), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if !self.is_running() {
                return true;
            }
            std::thread::sleep(crate::wait::POLL);
        }
        self.kill();
        false
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's last lines, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log, LOG_TAIL_LINES)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A command line for messages, without the `setpriv` wrapper.
pub fn describe(cmd: &Command) -> String {
    let mut parts: Vec<String> = Vec::new();
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut args = cmd.get_args().map(|a| a.to_string_lossy().into_owned());
    if program.ends_with("setpriv") {
        // `--pdeathsig KILL -- <program>`
        let mut rest: Vec<String> = args.by_ref().skip_while(|a| a != "--").skip(1).collect();
        if !rest.is_empty() {
            rest[0] = short_program(&rest[0]);
        }
        parts.extend(rest);
    } else {
        parts.push(short_program(&program));
        parts.extend(args);
    }
    parts.join(" ")
}

fn short_program(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ci_variable_is_scrubbed_and_the_ones_set_after_are_kept() {
        // What a developer's shell may hold, including settings no list of
        // names would know about yet.
        let inherited = [
            ("CI_JOB_TIMEOUT", "1"),
            ("CI_MAX_LOG_BYTES", "10"),
            ("CI_SOMETHING_NEW", "x"),
            ("CI_DB_PATH", "/wrong.db"),
            ("NOT_CI_SETTING", "kept"),
            ("PATH", "/usr/bin:/bin"),
        ];
        let mut cmd = Command::new("/usr/bin/env");
        // The environment the child would inherit…
        cmd.env_clear().envs(
            inherited
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string())),
        );
        // …scrubbed as the kit does, then what the test wants.
        scrub_ci_env_of(
            &mut cmd,
            inherited.iter().map(|(name, _)| OsString::from(name)),
        );
        cmd.env("CI_DB_PATH", "/right.db");
        let out = cmd.output().expect("run env");
        let seen = String::from_utf8_lossy(&out.stdout);
        let mut ci: Vec<&str> = seen.lines().filter(|l| l.starts_with("CI_")).collect();
        ci.sort_unstable();
        assert_eq!(ci, ["CI_DB_PATH=/right.db"], "{seen}");
        assert!(seen.lines().any(|l| l == "NOT_CI_SETTING=kept"), "{seen}");
    }

    #[test]
    fn commands_scrub_this_process_environment() {
        let cmd = command(Path::new("/usr/bin/env"));
        let removed: Vec<String> = cmd
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            assert_eq!(
                removed.contains(&name),
                name.starts_with("CI_"),
                "{name} removed: {removed:?}"
            );
        }
    }

    #[test]
    fn announcements_give_the_url() {
        assert_eq!(
            announced_url("Listening on http://127.0.0.1:41234", SERVER_ANNOUNCEMENT).as_deref(),
            Some("http://127.0.0.1:41234")
        );
        assert_eq!(
            announced_url(
                "Metrics on http://127.0.0.1:9464/\n",
                CONTROLLER_ANNOUNCEMENT
            )
            .as_deref(),
            Some("http://127.0.0.1:9464")
        );
        assert_eq!(
            announced_url("Metrics on nowhere", CONTROLLER_ANNOUNCEMENT),
            None
        );
        assert_eq!(announced_url("noise", SERVER_ANNOUNCEMENT), None);
    }

    #[test]
    fn ports_are_read_from_urls() {
        assert_eq!(port_of("http://127.0.0.1:41234"), Some(41234));
        assert_eq!(port_of("http://127.0.0.1:8000/"), Some(8000));
        assert_eq!(port_of("http://localhost"), None);
    }
}
