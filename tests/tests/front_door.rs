//! The lost 413 of issue 15 on a real installation, through the real `ci`:
//! a project over the server's upload limit is refused with the server's
//! own answer every time, never with a broken pipe or a reset.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use ci_testkit::{copy_fixture, run, Project, TestSystem};

/// The server's limit in these tests; the project is far above it, so the
/// server refuses while `ci` still has most of it to send.
const LIMIT: u64 = 1024 * 1024;

fn project_over_the_limit() -> Project {
    let project = copy_fixture("no-requirements");
    let data = ci_testkit::incompressible_bytes(24 * 1024 * 1024, 5);
    std::fs::write(project.path().join("blob.bin"), data).unwrap();
    project
}

#[test]
fn an_upload_over_the_limit_is_told_its_413_every_time() {
    let sys = TestSystem::options()
        .server_env("CI_MAX_UPLOAD_BYTES", &LIMIT.to_string())
        .start();
    let project = project_over_the_limit();
    for round in 0..10 {
        let mut args = vec!["submit", "test"];
        if round % 2 == 1 {
            args.push("--async");
        }
        let out = run(sys.ci().args(&args).current_dir(project.path()));
        out.assert_code(1);
        assert!(
            out.stderr
                .contains(&format!("Upload too large: the limit is {LIMIT} bytes")),
            "round {round}: the server's 413 and its message\n{out}"
        );
        assert!(
            !out.stderr.contains("closed the connection"),
            "round {round}\n{out}"
        );
    }
    assert!(sys.unfinished_jobs().unwrap().is_empty());
}

/// The settings reach the binary: with `CI_HEADER_READ_TIMEOUT=1s`, a
/// half-sent request is closed, while the server answers the next client.
#[test]
fn the_server_binary_closes_a_half_sent_request_after_its_header_read_timeout() {
    use std::io::{Read, Write};
    let sys = TestSystem::options()
        .server_env("CI_HEADER_READ_TIMEOUT", "1s")
        .start();
    let opened = std::time::Instant::now();
    let mut socket = std::net::TcpStream::connect(sys.server_addr()).unwrap();
    socket.write_all(b"GET /jobs HTTP/1.1\r\nHost: lo").unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(90)))
        .unwrap();
    let mut rest = Vec::new();
    // Ends at the server's close (or a reset), or fails after the deadline.
    let closed = match socket.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "the server closes the half-sent request");
    assert!(opened.elapsed() >= std::time::Duration::from_secs(1));
    assert!(sys.server_is_ready());
}
