//! The installation keeps its secrets (issue 16, section 4): the database
//! files are readable by their owner only, and no service prints the
//! password of a PostgreSQL URL it cannot use.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use ci_testkit::process::{command, Service, SERVER_ANNOUNCEMENT};
use ci_testkit::{binary, run_within, SERVICE_START};

const PASSWORD: &str = "Wr0ng-S3cret-pw";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_default_database_folder_and_files_are_private() {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = command(&binary("ci-server"));
    cmd.args(["--host", "127.0.0.1", "--port", "0"])
        .env("HOME", home.path());
    let (mut server, _url) = Service::start_announcing(
        "server",
        &mut cmd,
        &home.path().join("server.log"),
        SERVER_ANNOUNCEMENT,
        SERVICE_START,
    )
    .unwrap();
    let dir = home.path().join(".ci");
    assert_eq!(mode(&dir), 0o700, "~/.ci");
    // Migrated and open in WAL mode: all three files exist now.
    for file in ["jobs.db", "jobs.db-wal", "jobs.db-shm"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    server.kill();
}

/// The test PostgreSQL server's URL with a password, naming a database
/// that does not exist (the test server trusts local connections, so a wrong
/// password alone would be let in).
fn url_it_cannot_open() -> String {
    let url = ci_testkit::postgres::server_url();
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = host.split_once('/').map_or(host, |(host, _)| host);
    format!("{scheme}://ci:{PASSWORD}@{host}/no_such_database_here")
}

#[test]
fn no_service_prints_the_password_of_a_database_url() {
    let home = tempfile::tempdir().unwrap();
    let urls = [
        url_it_cannot_open(),
        format!("mysql://ci:{PASSWORD}@127.0.0.1:3306/ci"),
    ];
    for url in &urls {
        for service in ["ci-server", "ci-controller"] {
            let mut cmd = command(&binary(service));
            cmd.env("CI_DATABASE_URL", url)
                .env("CI_METRICS_ADDR", "")
                .env("HOME", home.path());
            if service == "ci-server" {
                cmd.args(["--port", "0"]);
            }
            let out = run_within(&mut cmd, Duration::from_secs(120));
            assert!(!out.status.success(), "{out}");
            assert!(
                !out.stderr.contains(PASSWORD) && !out.stdout.contains(PASSWORD),
                "{service} printed the password\n{out}"
            );
            assert!(out.stderr.contains("cannot open the database"), "{out}");
        }
    }
}
