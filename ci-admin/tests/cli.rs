//! The real `ci-admin` binary on a temporary database: every command, its exact
//! output and its exit code. The database is also opened directly, to check that
//! what the tool reports is what the server will see when it authenticates.

#![allow(
    clippy::unwrap_used,
    reason = "a test helper that cannot go on should fail the test"
)]

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ci_common::time::{parse_api_string, to_api_string};
use ci_common::{hash_api_key, looks_like_api_key, User};
use ci_common::{JobId, UserId};
use ci_persistence::DatabaseLocation;
use ci_persistence::Store;
use ci_testkit::postgres::ScratchDatabase;
use ci_testkit::process;
use serde_json::Value;
use tempfile::TempDir;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_ci-admin");
const ZERO_ID: &str = "00000000-0000-0000-0000-000000000000";
const DASHES: &str = "----------------------------------------------------------------------------------------------------";
const USER_HEADER: &str =
    "ID                                     Name                 Email                          Status    ";
const KEY_HEADER: &str =
    "ID                                     Name                      User                      Status    ";

/// One temporary installation: its own database file (in a folder that does
/// not exist yet), or its own PostgreSQL database, and its own HOME, so the
/// real `~/.ci` is never touched.
struct Admin {
    dir: TempDir,
    db: PathBuf,
    /// Set when the installation is on PostgreSQL instead of `db`; the
    /// database goes with the installation.
    postgres: Option<ScratchDatabase>,
}

impl Admin {
    fn new() -> Admin {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("data").join("jobs.db");
        std::fs::create_dir(dir.path().join("home")).unwrap();
        Admin {
            dir,
            db,
            postgres: None,
        }
    }

    /// With an empty database file made, as `user create` (or a service)
    /// would have: the other commands refuse a missing file.
    fn initialised() -> Admin {
        let admin = Admin::new();
        with_store(&admin.location(), |_| async {});
        admin
    }

    /// On a fresh database of the server `CI_TEST_POSTGRES_URL` names
    /// (`scripts/postgres.sh` starts one and prints its URL).
    fn postgres() -> Admin {
        let mut admin = Admin::new();
        admin.postgres = Some(block_on(ScratchDatabase::create("admin")).unwrap());
        admin
    }

    fn location(&self) -> DatabaseLocation {
        match &self.postgres {
            Some(db) => DatabaseLocation::Url(db.url().to_string()),
            None => DatabaseLocation::SqliteFile(self.db.clone()),
        }
    }

    /// The binary with no database configured at all: no `CI_*` variable
    /// of the caller reaches it.
    fn bare(&self) -> Command {
        let mut cmd = Command::new(BIN);
        process::scrub_ci_env(&mut cmd);
        cmd.env("HOME", self.dir.path().join("home"))
            .env("RUST_BACKTRACE", "1");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.bare();
        match &self.postgres {
            Some(db) => cmd.env("CI_DATABASE_URL", db.url()),
            None => cmd.env("CI_DB_PATH", &self.db),
        };
        cmd.args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        succeeded(self.run(args), args)
    }

    fn fails(&self, args: &[&str]) -> String {
        failed(self.run(args), args)
    }

    fn json(&self, args: &[&str]) -> Vec<Value> {
        let out = self.ok(args);
        match serde_json::from_str(&out).unwrap() {
            Value::Array(items) => items,
            other => panic!("expected a JSON array from {args:?}, got {other}"),
        }
    }

    fn create_user(&self, name: &str, email: &str) -> UserId {
        let out = self.ok(&["user", "create", "--name", name, "--email", email]);
        let id = out
            .lines()
            .find_map(|l| l.strip_prefix("  ID:    "))
            .unwrap_or_else(|| panic!("no ID line in {out:?}"));
        id.parse().unwrap()
    }

    fn create_key(&self, user: UserId, name: &str) -> String {
        let out = self.ok(&[
            "key",
            "create",
            "--user-id",
            &user.to_string(),
            "--name",
            name,
        ]);
        secret_in(&out)
    }

    fn key_ids(&self) -> Vec<String> {
        self.json(&["key", "list", "--json"])
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_string())
            .collect()
    }

    fn user(&self, id: UserId) -> User {
        with_store(&self.location(), |store| async move {
            store.get_user(id).await.unwrap()
        })
        .unwrap()
    }

    /// Whom the server would take this key for: `None` when it must be refused.
    fn authenticate(&self, secret: &str) -> Option<UserId> {
        let hash = hash_api_key(secret);
        with_store(&self.location(), |store| async move {
            store.authenticate(&hash).await.unwrap().map(|u| u.id)
        })
    }
}

fn block_on<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn with_store<T, F: Future<Output = T>>(
    location: &DatabaseLocation,
    f: impl FnOnce(Store) -> F,
) -> T {
    block_on(async {
        let store = Store::open(location).await.unwrap();
        let value = f(store.clone()).await;
        store.close().await;
        value
    })
}

fn succeeded(out: Output, args: &[&str]) -> String {
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "ci-admin {args:?} failed: {stderr}");
    assert_eq!(stderr, "", "ci-admin {args:?} wrote to stderr");
    stdout
}

/// A failure is exit code 1, nothing on stdout and one `Error: …` line on
/// stderr: no panic, no backtrace (RUST_BACKTRACE is set to make one show).
fn failed(out: Output, args: &[&str]) -> String {
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "ci-admin {args:?}: {stderr}");
    assert_eq!(stdout, "", "ci-admin {args:?} wrote to stdout");
    assert!(stderr.starts_with("Error: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for sign in ["panicked", "backtrace", "RUST_BACKTRACE", "stack"] {
        assert!(!stderr.contains(sign), "{stderr}");
    }
    stderr
}

fn secret_in(out: &str) -> String {
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("  API Key: "))
        .unwrap_or_else(|| panic!("no API Key line in {out:?}"));
    assert!(looks_like_api_key(secret), "{secret}");
    secret.to_string()
}

fn keys_of(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

fn assert_api_time(v: &Value) -> chrono::DateTime<chrono::Utc> {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    assert!(s.ends_with('Z'), "{s}");
    parse_api_string(s).unwrap()
}

#[test]
fn user_create_prints_the_reference_block_and_works_on_a_fresh_file() {
    let admin = Admin::new();
    assert!(!admin.db.parent().unwrap().exists());
    let out = admin.ok(&[
        "user",
        "create",
        "--name",
        "Alice Smith",
        "--email",
        "alice@example.com",
    ]);
    let id = out.lines().nth(1).unwrap().trim_start_matches("  ID:    ");
    let id: UserId = id.parse().unwrap();
    assert_eq!(
        out,
        format!(
            "✓ User created successfully\n  ID:    {id}\n  Name:  Alice Smith\n  Email: alice@example.com\n"
        )
    );
    let user = admin.user(id);
    assert_eq!(
        (user.name.as_str(), user.email.as_str(), user.is_active),
        ("Alice Smith", "alice@example.com", true)
    );
}

#[test]
fn a_malformed_email_is_refused_before_the_database_is_touched() {
    let admin = Admin::new();
    for email in ["not-an-email", "a@b", "a b@c.de", "a@b.c0m", ""] {
        let err = admin.fails(&["user", "create", "--name", "X", "--email", email]);
        assert_eq!(err, format!("Error: Invalid email format: {email}\n"));
    }
    assert!(!admin.db.exists());
}

/// The commands' behaviour, the same on every database backend.
macro_rules! backend_suite {
    ($make:expr) => {
        #[test]
        fn a_taken_email_is_refused() {
            let admin = $make;
            let alice = admin.create_user("Alice", "alice@example.com");
            let err = admin.fails(&[
                "user",
                "create",
                "--name",
                "Alice Clone",
                "--email",
                "alice@example.com",
            ]);
            assert_eq!(
                err,
                "Error: User with email alice@example.com already exists\n"
            );
            let users = admin.json(&["user", "list", "--json"]);
            assert_eq!(users.len(), 1);
            assert_eq!(users[0]["id"], alice.to_string());
            assert_eq!(users[0]["name"], "Alice");
        }

        #[test]
        fn user_list_table_and_json() {
            let admin = $make;
            assert_eq!(admin.ok(&["user", "list"]), "No users found.\n");
            assert_eq!(admin.ok(&["user", "list", "--json"]), "[]\n");

            let alice = admin.create_user("Alice", "alice@example.com");
            let bob = admin.create_user("Bob", "bob@example.com");
            admin.ok(&["user", "deactivate", &bob.to_string()]);

            assert_eq!(
                admin.ok(&["user", "list"]),
                format!(
                    "\n{USER_HEADER}\n{DASHES}\n\
                     {alice}   Alice                alice@example.com              Active    \n\
                     {bob}   Bob                  bob@example.com                Inactive  \n\n"
                )
            );

            let users = admin.json(&["user", "list", "--json"]);
            assert_eq!(users.len(), 2);
            for (json, id, name, email, active) in [
                (&users[0], alice, "Alice", "alice@example.com", true),
                (&users[1], bob, "Bob", "bob@example.com", false),
            ] {
                assert_eq!(
                    keys_of(json),
                    BTreeSet::from(["id", "name", "email", "created_at", "is_active"])
                );
                assert_eq!(json["id"], id.to_string());
                assert_eq!(json["name"], name);
                assert_eq!(json["email"], email);
                assert_eq!(json["is_active"], active);
                assert_eq!(
                    assert_api_time(&json["created_at"]),
                    admin.user(id).created_at
                );
            }
        }

        #[test]
        fn user_get_by_id_or_email_shows_the_details_block() {
            let admin = $make;
            let id = admin.create_user("Alice", "alice@example.com");
            let created = to_api_string(admin.user(id).created_at);
            let block = |status: &str| {
                format!(
                    "\nUser Details:\n  ID:         {id}\n  Name:       Alice\n  Email:      alice@example.com\n  \
                     Created:    {created}\n  Status:     {status}\n\n"
                )
            };
            assert_eq!(admin.ok(&["user", "get", &id.to_string()]), block("Active"));
            assert_eq!(
                admin.ok(&["user", "get", "--email", "alice@example.com"]),
                block("Active")
            );
            admin.ok(&["user", "deactivate", &id.to_string()]);
            assert_eq!(
                admin.ok(&["user", "get", &id.to_string()]),
                block("Inactive")
            );
        }

        #[test]
        fn user_get_needs_exactly_one_of_id_and_email() {
            let admin = $make;
            assert_eq!(
                admin.fails(&["user", "get"]),
                "Error: Must provide either USER_ID or --email\n"
            );
            assert_eq!(
                admin.fails(&["user", "get", ZERO_ID, "--email", "a@example.com"]),
                "Error: Provide either USER_ID or --email, not both\n"
            );
        }

        #[test]
        fn unknown_or_malformed_user_ids_are_not_found() {
            let admin = $make;
            admin.create_user("Alice", "alice@example.com");
            for id in [ZERO_ID, "not-a-uuid"] {
                let expected = format!("Error: User not found: {id}\n");
                assert_eq!(admin.fails(&["user", "get", id]), expected);
                assert_eq!(admin.fails(&["user", "deactivate", id]), expected);
                assert_eq!(admin.fails(&["user", "activate", id]), expected);
                assert_eq!(
                    admin.fails(&["key", "create", "--user-id", id, "--name", "k"]),
                    expected
                );
                assert_eq!(admin.fails(&["key", "list", "--user-id", id]), expected);
            }
            assert_eq!(
                admin.fails(&["user", "get", "--email", "nobody@example.com"]),
                "Error: User not found: nobody@example.com\n"
            );
            let by_email = "Error: User not found with email: nobody@example.com\n";
            assert_eq!(
                admin.fails(&[
                    "key",
                    "create",
                    "--email",
                    "nobody@example.com",
                    "--name",
                    "k"
                ]),
                by_email
            );
            assert_eq!(
                admin.fails(&["key", "list", "--email", "nobody@example.com", "--json"]),
                by_email
            );
            // Nothing was created on the way.
            assert!(admin.key_ids().is_empty());
        }

        #[test]
        fn deactivating_a_user_stops_their_keys_and_activating_restores_them() {
            let admin = $make;
            let alice = admin.create_user("Alice", "alice@example.com");
            let secret = admin.create_key(alice, "Laptop key");
            assert_eq!(admin.authenticate(&secret), Some(alice));

            assert_eq!(
                admin.ok(&["user", "deactivate", &alice.to_string()]),
                "✓ User deactivated: alice@example.com\n"
            );
            assert!(!admin.user(alice).is_active);
            assert_eq!(admin.authenticate(&secret), None);
            // The key itself is not revoked: it is the user who is off.
            assert_eq!(admin.json(&["key", "list", "--json"])[0]["is_active"], true);

            assert_eq!(
                admin.ok(&["user", "activate", &alice.to_string()]),
                "✓ User activated: alice@example.com\n"
            );
            assert!(admin.user(alice).is_active);
            assert_eq!(admin.authenticate(&secret), Some(alice));
        }

        #[test]
        fn deactivating_a_user_cancels_their_queued_and_running_jobs_only() {
            let admin = $make;
            let alice = admin.create_user("Alice", "alice@example.com");
            let bob = admin.create_user("Bob", "bob@example.com");
            let (queued, running, ended, bobs) = with_store(&admin.location(), |store| async move {
                let digest = store.put_archive(b"not a zip; never unpacked").await.unwrap();
                let job = |user| ci_persistence::NewJob::new(user, digest.clone());
                let queued = store.create_job(&job(alice)).await.unwrap().id;
                let running = store.create_job(&job(alice)).await.unwrap().id;
                store.mark_running(running, "c", "i", None).await.unwrap();
                let ended = store.create_job(&job(alice)).await.unwrap().id;
                store.mark_running(ended, "c", "i", None).await.unwrap();
                store
                    .finish_job(ended, &ci_persistence::JobOutcome::exited(0))
                    .await
                    .unwrap();
                let bobs = store.create_job(&job(bob)).await.unwrap().id;
                (queued, running, ended, bobs)
            });
            assert_eq!(
                admin.ok(&["user", "deactivate", &alice.to_string()]),
                "✓ User deactivated: alice@example.com\n  2 queued or running job(s) cancelled.\n"
            );
            with_store(&admin.location(), |store| async move {
                for (id, asked) in [(queued, true), (running, true), (ended, false), (bobs, false)] {
                    let job = store.get_job(id).await.unwrap().unwrap();
                    assert_eq!(job.cancel_requested, asked, "{job:?}");
                }
                // The controller ends them cancelled: the reason is the deactivation.
                let cancelled = ci_persistence::JobOutcome::cancelled();
                let job = store.finish_job(running, &cancelled).await.unwrap();
                let reason = "The job was cancelled: its owner's account was deactivated";
                assert_eq!(job.failure_reason.as_deref(), Some(reason));
                let page = store.read_log_page(running, 0, 100, 1 << 20).await.unwrap();
                assert_eq!(page.chunks.last().unwrap().text, format!("{reason}\n"));
                // A job cancelled by its owner has no such reason.
                store.request_cancel(bobs).await.unwrap();
                let job = store.finish_job(bobs, &cancelled).await.unwrap();
                assert_eq!(job.failure_reason, None);
            });
        }

        #[test]
        fn key_create_shows_the_key_once_with_a_warning_and_the_key_works() {
            let admin = $make;
            let alice = admin.create_user("Alice", "alice@example.com");
            let expected = |out: &str, secret: &str, name: &str| {
                let id = out
                    .lines()
                    .find_map(|l| l.strip_prefix("  Key ID:  "))
                    .unwrap_or_else(|| panic!("no Key ID line in {out:?}"));
                Uuid::parse_str(id).unwrap();
                format!(
                    "\n✓ API key created successfully\n\n  API Key: {secret}\n  Key ID:  {id}\n  Name:    {name}\n  \
                     User:    alice@example.com\n\n  ⚠️  IMPORTANT: This is the only time you'll see this key!\n     \
                     Save it securely now.\n\n"
                )
            };

            let out = admin.ok(&[
                "key",
                "create",
                "--user-id",
                &alice.to_string(),
                "--name",
                "Alice's laptop key",
            ]);
            let by_id = secret_in(&out);
            assert_eq!(out, expected(&out, &by_id, "Alice's laptop key"));
            assert_eq!(by_id.len(), 3 + 40);

            let out = admin.ok(&[
                "key",
                "create",
                "--email",
                "alice@example.com",
                "--name",
                "CI runner",
            ]);
            let by_email = secret_in(&out);
            assert_eq!(out, expected(&out, &by_email, "CI runner"));

            assert_ne!(by_id, by_email);
            assert_eq!(admin.authenticate(&by_id), Some(alice));
            assert_eq!(admin.authenticate(&by_email), Some(alice));
            assert_eq!(admin.authenticate(&format!("{by_id}x")), None);
        }

        #[test]
        fn key_create_needs_exactly_one_owner() {
            let admin = $make;
            let alice = admin.create_user("Alice", "alice@example.com").to_string();
            assert_eq!(
                admin.fails(&["key", "create", "--name", "k"]),
                "Error: Must provide either --user-id or --email\n"
            );
            assert_eq!(
                admin.fails(&[
                    "key",
                    "create",
                    "--user-id",
                    &alice,
                    "--email",
                    "alice@example.com",
                    "--name",
                    "k"
                ]),
                "Error: Provide either --user-id or --email, not both\n"
            );
            assert_eq!(
                admin.fails(&[
                    "key",
                    "list",
                    "--user-id",
                    &alice,
                    "--email",
                    "alice@example.com"
                ]),
                "Error: Provide either --user-id or --email, not both\n"
            );
            assert!(admin.key_ids().is_empty());
        }

        #[test]
        fn key_list_never_shows_a_key_its_prefix_or_its_hash() {
            let admin = $make;
            let alice = admin.create_user("Alice", "alice@example.com").to_string();
            let bob = admin.create_user("Bob", "bob@example.com");
            let secrets = [
                admin.create_key(alice.parse().unwrap(), "Laptop key"),
                admin.create_key(alice.parse().unwrap(), "Server key"),
                admin.create_key(bob, "Bob key"),
            ];
            let listings: [&[&str]; 6] = [
                &["key", "list"],
                &["key", "list", "--json"],
                &["key", "list", "--user-id", &alice],
                &["key", "list", "--user-id", &alice, "--json"],
                &["key", "list", "--email", "bob@example.com"],
                &["key", "list", "--email", "bob@example.com", "--json"],
            ];
            for args in listings {
                let out = admin.ok(args);
                assert!(
                    out.contains("Laptop key") || out.contains("Bob key"),
                    "{out}"
                );
                assert!(!out.contains("ci_"), "{args:?}: {out}");
                for secret in &secrets {
                    assert!(!out.contains(secret.as_str()), "{args:?}: {out}");
                    assert!(!out.contains(&secret[3..11]), "{args:?}: {out}");
                    assert!(!out.contains(&hash_api_key(secret)), "{args:?}: {out}");
                }
            }
        }

        #[test]
        fn key_list_tables_show_owners_filters_and_revocation() {
            let admin = $make;
            assert_eq!(admin.ok(&["key", "list"]), "No API keys found.\n");
            assert_eq!(admin.ok(&["key", "list", "--json"]), "[]\n");
            let alice = admin.create_user("Alice", "alice@example.com");
            let bob = admin.create_user("Bob", "bob@example.com");
            assert_eq!(
                admin.ok(&["key", "list", "--user-id", &alice.to_string()]),
                "No API keys found.\n"
            );

            admin.create_key(alice, "Laptop key");
            admin.create_key(alice, "");
            admin.create_key(bob, "Bob key");
            let ids = admin.key_ids();
            admin.ok(&["key", "revoke", &ids[1]]);
            let (laptop, unnamed, bob_key) = (&ids[0], &ids[1], &ids[2]);

            let laptop_row =
                format!("{laptop}   Laptop key                alice@example.com         Active    ");
            let unnamed_row =
                format!("{unnamed}   (unnamed)                 alice@example.com         Revoked   ");
            let bob_row =
                format!("{bob_key}   Bob key                   bob@example.com           Active    ");
            assert_eq!(
                admin.ok(&["key", "list"]),
                format!("\n{KEY_HEADER}\n{DASHES}\n{laptop_row}\n{unnamed_row}\n{bob_row}\n\n")
            );
            let alices = format!("\n{KEY_HEADER}\n{DASHES}\n{laptop_row}\n{unnamed_row}\n\n");
            assert_eq!(
                admin.ok(&["key", "list", "--user-id", &alice.to_string()]),
                alices
            );
            assert_eq!(
                admin.ok(&["key", "list", "--email", "alice@example.com"]),
                alices
            );
            assert_eq!(
                admin.ok(&["key", "list", "--email", "bob@example.com"]),
                format!("\n{KEY_HEADER}\n{DASHES}\n{bob_row}\n\n")
            );
        }

        #[test]
        fn key_list_json_has_the_documented_fields_and_times() {
            let admin = $make;
            let alice = admin.create_user("Alice", "alice@example.com");
            let bob = admin.create_user("Bob", "bob@example.com");
            let secret = admin.create_key(alice, "Laptop key");
            admin.create_key(bob, "Bob key");

            let keys = admin.json(&["key", "list", "--user-id", &alice.to_string(), "--json"]);
            assert_eq!(keys.len(), 1);
            let key = &keys[0];
            assert_eq!(
                keys_of(key),
                BTreeSet::from([
                    "id",
                    "name",
                    "user_id",
                    "created_at",
                    "last_used_at",
                    "is_active"
                ])
            );
            Uuid::parse_str(key["id"].as_str().unwrap()).unwrap();
            assert_eq!(key["name"], "Laptop key");
            assert_eq!(key["user_id"], alice.to_string());
            assert_eq!(key["is_active"], true);
            assert_eq!(key["last_used_at"], Value::Null);
            let created = assert_api_time(&key["created_at"]);

            assert_eq!(admin.authenticate(&secret), Some(alice));
            let key = admin
                .json(&["key", "list", "--json"])
                .into_iter()
                .find(|k| k["user_id"] == alice.to_string())
                .unwrap();
            assert!(assert_api_time(&key["last_used_at"]) >= created);

            let all = admin.json(&["key", "list", "--json"]);
            let owners: Vec<&Value> = all.iter().map(|k| &k["user_id"]).collect();
            assert_eq!(
                owners,
                [
                    &Value::from(alice.to_string()),
                    &Value::from(bob.to_string())
                ]
            );
        }

        #[test]
        fn key_revoke_stops_that_key_at_once_and_only_that_key() {
            let admin = $make;
            let alice = admin.create_user("Alice", "alice@example.com");
            let laptop = admin.create_key(alice, "Laptop key");
            let server = admin.create_key(alice, "Server key");
            let ids = admin.key_ids();

            assert_eq!(
                admin.ok(&["key", "revoke", &ids[0]]),
                "✓ API key revoked: Laptop key\n"
            );
            assert_eq!(admin.authenticate(&laptop), None);
            assert_eq!(admin.authenticate(&server), Some(alice));
            let keys = admin.json(&["key", "list", "--json"]);
            assert_eq!(keys[0]["is_active"], false);
            assert_eq!(keys[1]["is_active"], true);

            for id in [ZERO_ID, "not-a-uuid"] {
                assert_eq!(
                    admin.fails(&["key", "revoke", id]),
                    format!("Error: API key not found: {id}\n")
                );
            }
        }
    };
}

mod sqlite {
    use super::*;
    backend_suite!(Admin::initialised());
}

/// On a fresh database of the PostgreSQL server `CI_TEST_POSTGRES_URL` names.
mod postgres {
    use super::*;
    backend_suite!(Admin::postgres());
}

#[test]
fn database_location_comes_from_flags_then_environment_then_home() {
    let admin = Admin::new();
    let root = admin.dir.path();
    let (a, b, c) = (root.join("a.db"), root.join("b.db"), root.join("c.db"));
    let users_in = |db: &Path| -> Vec<String> {
        let out = succeeded(
            admin
                .bare()
                .args(["user", "list", "--json", "--db-path"])
                .arg(db)
                .output()
                .unwrap(),
            &["user", "list"],
        );
        let users: Vec<Value> = serde_json::from_str(&out).unwrap();
        users
            .iter()
            .map(|u| u["email"].as_str().unwrap().to_string())
            .collect()
    };
    let create = |cmd: &mut Command, email: &str| {
        let out = cmd
            .args(["user", "create", "--name", "U", "--email", email])
            .output()
            .unwrap();
        succeeded(out, &["user", "create", email]);
    };

    // The flag before or after the subcommand, and over the environment.
    create(
        admin.bare().env("CI_DB_PATH", &b).arg("--db-path").arg(&a),
        "before@example.com",
    );
    let after = [
        "user",
        "create",
        "--name",
        "U",
        "--email",
        "after@example.com",
        "--db-path",
    ];
    let out = admin
        .bare()
        .env("CI_DB_PATH", &b)
        .args(after)
        .arg(&a)
        .output();
    succeeded(out.unwrap(), &after);
    create(admin.bare().env("CI_DB_PATH", &b), "env@example.com");
    assert_eq!(users_in(&a), ["before@example.com", "after@example.com"]);
    assert_eq!(users_in(&b), ["env@example.com"]);

    // A URL wins over a path, from the environment or as a flag.
    let url = format!("sqlite://{}", c.display());
    create(
        admin
            .bare()
            .env("CI_DB_PATH", &b)
            .env("CI_DATABASE_URL", &url),
        "url-env@example.com",
    );
    create(
        admin
            .bare()
            .args(["--database-url", &url, "--db-path"])
            .arg(&b),
        "url-flag@example.com",
    );
    assert_eq!(
        users_in(&c),
        ["url-env@example.com", "url-flag@example.com"]
    );
    assert_eq!(users_in(&b), ["env@example.com"]);

    // Nothing configured: ~/.ci/jobs.db.
    create(&mut admin.bare(), "home@example.com");
    assert_eq!(
        users_in(&root.join("home").join(".ci").join("jobs.db")),
        ["home@example.com"]
    );
}

#[test]
fn an_unusable_database_is_an_error_not_a_panic() {
    let admin = Admin::new();
    let run = |cmd: &mut Command| failed(cmd.args(["user", "list"]).output().unwrap(), &[]);

    let err = run(admin
        .bare()
        .args(["--database-url", "mysql://admin:hunter2@db.example/ci"]));
    assert!(err.contains("unsupported database URL"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    // A folder where the file should be: SQLite cannot open it.
    let folder = admin.dir.path().join("folder.db");
    std::fs::create_dir(&folder).unwrap();
    let err = run(admin.bare().arg("--db-path").arg(&folder));
    let prefix = format!("Error: cannot open the database at {}: ", folder.display());
    assert!(err.starts_with(&prefix), "{err}");
    assert_eq!(
        err.matches("unable to open database file").count(),
        1,
        "{err}"
    );
}

#[test]
fn emails_are_unique_in_any_case_and_names_must_not_be_blank() {
    let admin = Admin::new();
    let ux = admin.create_user("UX", "ux@example.com");
    let err = admin.fails(&[
        "user",
        "create",
        "--name",
        "Other",
        "--email",
        "UX@Example.com",
    ]);
    assert_eq!(
        err,
        "Error: User with email UX@Example.com already exists\n"
    );
    // Looked up in any case too.
    let out = admin.ok(&["user", "get", "--email", "Ux@EXAMPLE.com"]);
    assert!(out.contains(&ux.to_string()), "{out}");

    for name in ["", "   "] {
        let err = admin.fails(&["user", "create", "--name", name, "--email", "n@example.com"]);
        assert_eq!(err, "Error: Name must not be blank\n");
    }
    assert_eq!(admin.json(&["user", "list", "--json"]).len(), 1);
}

#[test]
fn only_user_create_makes_a_database() {
    let admin = Admin::new();
    for args in [
        &["user", "list"][..],
        &["user", "list", "--json"],
        &["key", "list"],
        &["user", "get", "--email", "a@example.com"],
        &["key", "revoke", ZERO_ID],
    ] {
        let err = admin.fails(args);
        assert!(
            err.contains(&format!("no database at {}", admin.db.display())),
            "{args:?}: {err}"
        );
        assert!(err.contains("CI_DB_PATH"), "{err}");
    }
    assert!(!admin.db.parent().unwrap().exists(), "no folder was made");
    admin.create_user("A", "a@example.com");
    assert_eq!(admin.json(&["user", "list", "--json"]).len(), 1);
}

#[test]
fn keys_show_their_id_and_a_second_revoke_says_it_was_revoked() {
    let admin = Admin::new();
    let user = admin.create_user("K", "k@example.com");
    let out = admin.ok(&[
        "key",
        "create",
        "--user-id",
        &user.to_string(),
        "--name",
        "laptop",
    ]);
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("  Key ID:  "))
        .unwrap_or_else(|| panic!("no Key ID line in {out:?}"));
    assert_eq!(admin.key_ids(), [id.to_string()]);
    assert_eq!(
        admin.ok(&["key", "revoke", id]),
        "✓ API key revoked: laptop\n"
    );
    let err = admin.fails(&["key", "revoke", id]);
    assert_eq!(err, "Error: API key laptop is already revoked\n");
}

#[test]
fn users_are_deactivated_and_activated_by_email() {
    let admin = Admin::new();
    let id = admin.create_user("E", "e@example.com");
    assert_eq!(
        admin.ok(&["user", "deactivate", "--email", "e@example.com"]),
        "✓ User deactivated: e@example.com\n"
    );
    assert!(!admin.user(id).is_active);
    assert_eq!(
        admin.ok(&["user", "activate", "--email", "E@example.com"]),
        "✓ User activated: e@example.com\n"
    );
    assert!(admin.user(id).is_active);
    let err = admin.fails(&["user", "activate", "--email", "nobody@example.com"]);
    assert!(err.contains("not found"), "{err}");
    let err = admin.fails(&["user", "activate"]);
    assert!(err.contains("--email"), "{err}");
}

// --- prune -------------------------------------------------------------------

/// The jobs of [`installation_to_prune`], by what prune must do with them.
struct PruneFixture {
    /// Ended 40 days ago.
    ended_long_ago: Vec<JobId>,
    /// Ended 10 days ago: gone with `--older-than 7d`, kept by the default 30d.
    ended_days_ago: JobId,
    /// Ended a moment ago.
    ended_now: JobId,
    /// Queued and running, submitted 400 days ago: never touched.
    unfinished: Vec<JobId>,
}

/// Jobs of every kind with output and test results, a session of a revoked
/// key, and archives; then the times moved into the past, as only a test can.
fn installation_to_prune(admin: &Admin) -> PruneFixture {
    use ci_common::test_results::{JobReport, TestCase, TestOutcome};
    use ci_persistence::{JobOutcome, NewJob};

    let owner = admin.create_user("Ada", "ada@example.com");
    let fixture = with_store(&admin.location(), |store| async move {
        let job = |bytes: &'static [u8], lines: usize, cases: usize| {
            let store = store.clone();
            async move {
                let digest = store.put_archive(bytes).await.unwrap();
                let id = store
                    .create_job(&NewJob::new(owner, digest))
                    .await
                    .unwrap()
                    .id;
                let output: Vec<String> = (0..lines).map(|i| format!("line {i}\n")).collect();
                store.append_log(id, &output, None).await.unwrap();
                let cases = (0..cases)
                    .map(|i| TestCase {
                        id: format!("t.py::test_{i}"),
                        file: Some("t.py".into()),
                        name: format!("test_{i}"),
                        outcome: TestOutcome::Passed,
                        duration_seconds: 0.1,
                        message: None,
                        traceback: None,
                    })
                    .collect();
                store
                    .put_job_report(id, &JobReport::Cases(cases))
                    .await
                    .unwrap();
                id
            }
        };
        let ended = |id: JobId| {
            let store = store.clone();
            async move {
                store.mark_running(id, "c", "img", None).await.unwrap();
                store.finish_job(id, &JobOutcome::exited(0)).await.unwrap();
                id
            }
        };
        let fixture = PruneFixture {
            ended_long_ago: vec![
                ended(job(b"PK only old", 20, 4).await).await,
                ended(job(b"PK shared", 5, 1).await).await,
            ],
            ended_days_ago: ended(job(b"PK ten days", 3, 2).await).await,
            ended_now: ended(job(b"PK shared", 7, 0).await).await,
            unfinished: vec![job(b"PK queued", 2, 0).await, {
                let id = job(b"PK running", 4, 0).await;
                store.mark_running(id, "c", "img", None).await.unwrap();
                id
            }],
        };
        // A browser session of a key revoked since.
        let key = ci_common::generate_api_key().unwrap();
        let record = store.create_api_key(owner, "browser", &key).await.unwrap();
        assert!(store.create_session("a-session", &key.hash).await.unwrap());
        store.revoke_api_key(record.id).await.unwrap();
        fixture
    });
    let location = admin.location();
    let sql = |statement: String| {
        block_on(ci_testkit::database::execute(&location, &statement)).unwrap();
    };
    for id in &fixture.ended_long_ago {
        sql(ci_testkit::database::age_job_sql(*id, 40));
    }
    sql(ci_testkit::database::age_job_sql(
        fixture.ended_days_ago,
        10,
    ));
    for id in &fixture.unfinished {
        sql(ci_testkit::database::age_job_sql(*id, 400));
    }
    sql(ci_testkit::database::age_archives_sql(400));
    fixture
}

/// The count lines of prune's report: `(what, how many)`.
fn prune_counts(out: &str) -> Vec<(String, String)> {
    let counts: Vec<(String, String)> = out
        .lines()
        .filter_map(|line| line.strip_prefix("  ")?.split_once(':'))
        .filter(|(what, _)| {
            [
                "jobs",
                "output chunks",
                "test results",
                "archives",
                "sessions",
            ]
            .contains(what)
        })
        .map(|(what, n)| (what.to_string(), n.trim().to_string()))
        .collect();
    assert_eq!(counts.len(), 5, "five counts in {out}");
    counts
}

fn count(counts: &[(String, String)], what: &str) -> String {
    counts
        .iter()
        .find(|(w, _)| w == what)
        .map(|(_, n)| n.clone())
        .unwrap_or_else(|| panic!("no {what} in {counts:?}"))
}

/// Every row of the tables prune deletes from, counted.
fn table_rows(admin: &Admin) -> Vec<i64> {
    let location = admin.location();
    [
        "jobs",
        "job_events",
        "job_test_cases",
        "job_test_reports",
        "archives",
        "archive_chunks",
        "sessions",
    ]
    .iter()
    .map(|table| {
        block_on(ci_testkit::database::integer(
            &location,
            &format!("SELECT COUNT(*) FROM {table}"),
        ))
        .unwrap()
    })
    .collect()
}

fn prune_removes_what_a_dry_run_reports(admin: &Admin) {
    let fixture = installation_to_prune(admin);
    let before = table_rows(admin);

    // The default is the controller's retention, 30 days.
    let default = prune_counts(&admin.ok(&["prune", "--dry-run"]));
    assert_eq!(count(&default, "jobs"), "2", "{default:?}");
    let dry = admin.ok(&["prune", "--older-than", "7d", "--dry-run"]);
    assert!(dry.starts_with("Dry run: nothing removed."), "{dry}");
    let dry = prune_counts(&dry);
    // 20 + 5 + 3 lines; 4 + 1 + 2 cases; only the old-only and the ten-day
    // archives (the shared one has a job left, the unfinished ones theirs).
    assert_eq!(
        dry.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(),
        ["3", "28", "7", "2 (22 B)", "1"],
        "{dry:?}"
    );
    assert_eq!(table_rows(admin), before, "a dry run changed the database");

    let done = admin.ok(&["prune", "--older-than", "7d"]);
    assert!(
        done.starts_with("✓ Removed what ended more than 7d ago"),
        "{done}"
    );
    assert_eq!(prune_counts(&done), dry, "{done}");
    with_store(&admin.location(), |store| async move {
        for id in fixture
            .ended_long_ago
            .iter()
            .chain([&fixture.ended_days_ago])
        {
            assert!(store.get_job(*id).await.unwrap().is_none(), "{id} stayed");
            assert!(store.read_log(*id, 0, 100).await.unwrap().is_empty());
        }
        for id in fixture.unfinished.iter().chain([&fixture.ended_now]) {
            let job = store.get_job(*id).await.unwrap().unwrap();
            assert!(!store.read_log(*id, 0, 100).await.unwrap().is_empty());
            assert!(store
                .get_archive(&job.archive_digest)
                .await
                .unwrap()
                .is_some());
        }
        if let Some(pages) = store.file_pages().await.unwrap() {
            assert!(pages.incremental);
            assert_eq!(pages.free, 0, "the freed pages were given back: {pages:?}");
        }
    });
    if admin.postgres.is_none() {
        assert!(
            done.contains("space given back to the file system:"),
            "{done}"
        );
    } else {
        assert!(done.contains("autovacuum reclaims"), "{done}");
    }

    // Nothing left to remove.
    let again = prune_counts(&admin.ok(&["prune", "--older-than", "7d"]));
    assert!(
        again.iter().all(|(_, n)| n == "0" || n == "0 (0 B)"),
        "{again:?}"
    );
}

#[test]
fn prune_removes_what_a_dry_run_reports_on_sqlite() {
    prune_removes_what_a_dry_run_reports(&Admin::initialised());
}

#[test]
fn prune_removes_what_a_dry_run_reports_on_postgres() {
    prune_removes_what_a_dry_run_reports(&Admin::postgres());
}

#[test]
fn prune_takes_only_durations_with_a_unit() {
    let admin = Admin::initialised();
    for bad in ["7", "seven days", "-1d"] {
        let out = admin.run(&["prune", &format!("--older-than={bad}")]);
        assert!(!out.status.success(), "{bad}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains("is not a duration"), "{bad}: {stderr}");
    }
}

/// A file made before incremental auto-vacuum is rewritten only when asked.
#[test]
fn prune_rewrites_an_older_file_only_when_asked() {
    let admin = Admin::new();
    std::fs::create_dir_all(admin.db.parent().unwrap()).unwrap();
    // A table before this build ever opened the file: auto-vacuum stays off.
    let location = DatabaseLocation::SqliteFile(admin.db.clone());
    // An empty file is an empty SQLite database.
    std::fs::File::create(&admin.db).unwrap();
    block_on(ci_testkit::database::execute(
        &location,
        "CREATE TABLE from_before (x BLOB)",
    ))
    .unwrap();
    let auto_vacuum = || {
        block_on(ci_testkit::database::integer(
            &location,
            "PRAGMA auto_vacuum",
        ))
        .unwrap()
    };
    installation_to_prune(&admin);
    assert_eq!(auto_vacuum(), 0);
    let out = admin.ok(&["prune"]);
    assert!(out.contains("predates incremental auto-vacuum"), "{out}");
    assert!(out.contains("ci-admin prune --rewrite-file"), "{out}");
    assert_eq!(auto_vacuum(), 0);
    let out = admin.ok(&["prune", "--rewrite-file"]);
    assert!(out.contains("database file rewritten:"), "{out}");
    assert_eq!(auto_vacuum(), 2, "auto_vacuum is INCREMENTAL now");
}
