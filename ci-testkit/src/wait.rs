//! Deadline waits: poll a condition until it holds, and fail the test with
//! what was waited for once the deadline passes. Nothing in the kit sleeps to
//! synchronise.

use std::time::{Duration, Instant};

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(50);

/// Polls `cond` until it holds; fails the test naming `what` after `within`.
pub fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    wait_for_value(what, within, || cond().then_some(()));
}

/// Polls `probe` until it gives a value, and returns it; fails the test
/// naming `what` after `within`.
pub fn wait_for_value<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `probe` until it gives `Ok(Some(_))`; fails the test after `within`
/// showing the last thing it saw (`Ok(None)` carries no news, `Err` its error).
pub fn wait_for_seen<T, E: std::fmt::Display>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Result<Result<T, String>, E>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let seen = match probe() {
            Ok(Ok(value)) => return value,
            Ok(Err(seen)) => seen,
            Err(e) => format!("error: {e}"),
        };
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}; last seen: {seen}");
        }
        std::thread::sleep(POLL);
    }
}
