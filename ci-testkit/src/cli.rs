//! Running the `ci` command line: to its end, or in the background with its
//! output collected as it comes.

use std::fmt;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ci_common::JobId;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::process::describe;
use crate::wait::POLL;

/// How long a `ci` command that should answer at once may take.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// What a finished `ci` command did.
#[derive(Debug, Clone)]
pub struct CiOutput {
    /// The command line, for messages.
    pub label: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CiOutput {
    /// The exit code; `None` when a signal ended the process.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Fails the test, showing the output, unless the exit code is `expected`.
    pub fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(expected),
            "`{}` exited with {:?}, expected {expected}\n{self}",
            self.label,
            self.status
        );
        self
    }

    /// The id in stderr's `Job ID: <uuid>` line (sync submit).
    pub fn job_id(&self) -> Option<JobId> {
        id_after(&self.stderr, "Job ID: ")
    }

    /// The id in stdout's `Job submitted: <uuid>` line (async submit).
    pub fn submitted_job_id(&self) -> Option<JobId> {
        id_after(&self.stdout, "Job submitted: ")
    }

    /// stdout's lines.
    pub fn stdout_lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

impl fmt::Display for CiOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "--- `{}`: {:?}", self.label, self.status)?;
        writeln!(f, "--- stdout:\n{}", abbreviate(&self.stdout))?;
        write!(f, "--- stderr:\n{}", abbreviate(&self.stderr))
    }
}

/// Long output shortened for failure messages: its start and its end.
fn abbreviate(text: &str) -> String {
    const KEEP: usize = 60;
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= 2 * KEEP {
        return text.to_string();
    }
    format!(
        "{}\n[… {} lines …]\n{}",
        lines[..KEEP].join("\n"),
        lines.len() - 2 * KEEP,
        lines[lines.len() - KEEP..].join("\n")
    )
}

/// The UUID following `prefix` at the start of a line of `text`.
pub fn id_after(text: &str, prefix: &str) -> Option<JobId> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix(prefix))
        .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// A `ci` process running in the background, its output collected as it
/// comes. Killed on drop.
pub struct RunningCi {
    label: String,
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl RunningCi {
    /// Starts `cmd` with its stdout and stderr collected.
    pub fn spawn(cmd: &mut Command) -> RunningCi {
        let label = describe(cmd);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{label}`: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(pipe) = child.stdout.take() {
            readers.push(collect(pipe, Arc::clone(&stdout)));
        }
        if let Some(pipe) = child.stderr.take() {
            readers.push(collect(pipe, Arc::clone(&stderr)));
        }
        RunningCi {
            label,
            child,
            stdout,
            stderr,
            readers,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    /// What it has printed on stdout so far.
    pub fn stdout(&self) -> String {
        text_of(&self.stdout)
    }

    /// What it has printed on stderr so far.
    pub fn stderr(&self) -> String {
        text_of(&self.stderr)
    }

    /// Whether the process has exited (without reaping its output).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits until stdout satisfies `cond`; fails early when the process
    /// exits first.
    pub fn wait_for_stdout(&mut self, what: &str, within: Duration, cond: impl Fn(&str) -> bool) {
        self.wait_for_output(what, within, |out, _| cond(out));
    }

    /// Waits until stderr satisfies `cond`; fails early when the process
    /// exits first.
    pub fn wait_for_stderr(&mut self, what: &str, within: Duration, cond: impl Fn(&str) -> bool) {
        self.wait_for_output(what, within, |_, err| cond(err));
    }

    fn wait_for_output(&mut self, what: &str, within: Duration, cond: impl Fn(&str, &str) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            let exited = self.has_exited();
            if cond(&self.stdout(), &self.stderr()) {
                return;
            }
            if exited {
                // The pipes may still hold the last output: read it all first.
                let output = self.finish(COMMAND_DEADLINE);
                if cond(&output.stdout, &output.stderr) {
                    return;
                }
                panic!("`{}` exited before {what}\n{output}", self.label);
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {within:?} waiting for {what} from `{}`\n--- stdout:\n{}\n--- stderr:\n{}",
                    self.label,
                    abbreviate(&self.stdout()),
                    abbreviate(&self.stderr())
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends SIGINT, as Ctrl-C in a terminal does.
    pub fn interrupt(&self) {
        signal::kill(self.pid(), Signal::SIGINT)
            .unwrap_or_else(|e| panic!("cannot send SIGINT to `{}`: {e}", self.label));
    }

    /// Waits for the process to exit and returns all its output; kills it and
    /// fails the test when it is still running after `within`.
    pub fn finish(&mut self, within: Duration) -> CiOutput {
        let deadline = Instant::now() + within;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "`{}` did not exit within {within:?}\n--- stdout:\n{}\n--- stderr:\n{}",
                        self.label,
                        abbreviate(&self.stdout()),
                        abbreviate(&self.stderr())
                    );
                }
                Err(e) => panic!("cannot wait for `{}`: {e}", self.label),
            }
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let output = CiOutput {
            label: self.label.clone(),
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        };
        // "No stack trace, ever": RUST_BACKTRACE is set, so a panic would show one.
        assert!(
            !output.stderr.contains("panicked at") && !output.stderr.contains("stack backtrace"),
            "`{}` panicked\n{output}",
            output.label
        );
        output
    }
}

impl Drop for RunningCi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(mut pipe: impl Read + Send + 'static, sink: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => match sink.lock() {
                    Ok(mut out) => out.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                },
            }
        }
    })
}

fn text_of(buffer: &Mutex<Vec<u8>>) -> String {
    match buffer.lock() {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(poisoned) => String::from_utf8_lossy(&poisoned.into_inner()).into_owned(),
    }
}

/// Runs `cmd` to its end (at most [`COMMAND_DEADLINE`] for commands that
/// should not take long; use [`RunningCi`] for others) and returns its output.
pub fn run(cmd: &mut Command) -> CiOutput {
    run_within(cmd, COMMAND_DEADLINE)
}

/// Runs `cmd` to its end, failing the test when it takes longer than `within`.
pub fn run_within(cmd: &mut Command, within: Duration) -> CiOutput {
    RunningCi::spawn(cmd).finish(within)
}

/// `cmd` run on a pseudo-terminal made by util-linux `script`, which copies
/// what the command writes (stdout and stderr both) to its own stdout: the
/// way to see what `ci` shows only on a terminal (colours, progress, status
/// lines). The program, arguments, environment and folder of `cmd` are
/// carried over; stdin is closed, so `script` never waits on the test's own.
pub fn on_terminal(cmd: &Command) -> Command {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
    let line: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote)
        .collect();
    let mut script = Command::new("script");
    script
        .args(["-q", "-e", "-c", &line.join(" "), "/dev/null"])
        .stdin(Stdio::null());
    if let Some(dir) = cmd.get_current_dir() {
        script.current_dir(dir);
    }
    for (name, value) in cmd.get_envs() {
        match value {
            Some(value) => script.env(name, value),
            None => script.env_remove(name),
        };
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_after_their_prefix() {
        let id = JobId::random();
        let text = format!("noise\nJob ID: {id}\nYou can reconnect ...\n");
        assert_eq!(id_after(&text, "Job ID: "), Some(id));
        assert_eq!(id_after("Job ID: nope", "Job ID: "), None);
    }

    #[test]
    fn long_output_is_abbreviated_in_messages() {
        let text: String = (0..1000).map(|i| format!("{i}\n")).collect();
        let short = abbreviate(&text);
        assert!(short.contains("[… 880 lines …]"), "{short}");
        assert!(short.starts_with("0\n") && short.ends_with("999"));
    }

    #[test]
    fn a_command_on_a_terminal_keeps_its_words_environment_and_folder() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "test -t 1 && echo \"tty: $0, $WORD, $(pwd)\"", "it's"])
            .env("WORD", "it's here")
            .env_remove("GONE")
            .current_dir(dir.path());
        let mut script = on_terminal(&cmd);
        assert!(script
            .get_envs()
            .any(|(name, value)| name == "GONE" && value.is_none()));
        let out = run(&mut script);
        out.assert_code(0);
        let folder = dir.path().canonicalize().expect("the folder's real path");
        let expected = format!("tty: it's, it's here, {}", folder.display());
        assert!(out.stdout.contains(&expected), "{out}");
    }
}
