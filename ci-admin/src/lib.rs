//! `ci-admin`: user and API-key management, and pruning what outlived its
//! retention, working directly on the database.
//!
//! The commands write to any [`Write`], so tests and the binary share them; the
//! binary only parses, opens the [`Store`] and maps errors to exit code 1. The
//! output keeps the reference implementation's wording and layout, because
//! operators' scripts read it.

pub mod cli;
mod keys;
mod prune;
mod users;

use std::io::Write;

use anyhow::{bail, Result};
use ci_common::User;
use ci_persistence::Store;

pub use cli::{Cli, Command, KeyCommand, UserCommand};

/// Checks what needs no database, so that a mistyped command neither creates
/// a database file nor touches an existing one.
pub fn check(command: &Command) -> Result<()> {
    match command {
        Command::User(UserCommand::Create { name, email }) => {
            users::check_name(name)?;
            users::check_email(email)
        }
        Command::User(
            UserCommand::Deactivate { user_id, email } | UserCommand::Activate { user_id, email },
        ) => UserRef::required(user_id.as_deref(), email.as_deref(), "USER_ID").map(drop),
        Command::User(UserCommand::Get { user_id, email }) => {
            UserRef::required(user_id.as_deref(), email.as_deref(), "USER_ID").map(drop)
        }
        Command::Key(KeyCommand::Create { user_id, email, .. }) => {
            UserRef::required(user_id.as_deref(), email.as_deref(), "--user-id").map(drop)
        }
        Command::Key(KeyCommand::List { user_id, email, .. }) => {
            UserRef::optional(user_id.as_deref(), email.as_deref(), "--user-id").map(drop)
        }
        _ => Ok(()),
    }
}

/// Whether the command may create the database when there is none: only
/// `user create`, the first thing done on a new installation. On anything
/// else a missing file is a mistyped path, not an empty installation.
pub fn may_create_database(command: &Command) -> bool {
    matches!(command, Command::User(UserCommand::Create { .. }))
}

/// Runs one command against the store, writing what the user sees to `out`.
pub async fn run(store: &Store, command: Command, out: &mut impl Write) -> Result<()> {
    check(&command)?;
    match command {
        Command::User(cmd) => match cmd {
            UserCommand::Create { name, email } => users::create(store, &name, &email, out).await,
            UserCommand::List { json } => users::list(store, json, out).await,
            UserCommand::Get { user_id, email } => {
                let who = UserRef::required(user_id.as_deref(), email.as_deref(), "USER_ID")?;
                users::get(store, &who, out).await
            }
            UserCommand::Deactivate { user_id, email } => {
                let who = UserRef::required(user_id.as_deref(), email.as_deref(), "USER_ID")?;
                users::set_active(store, &who, false, out).await
            }
            UserCommand::Activate { user_id, email } => {
                let who = UserRef::required(user_id.as_deref(), email.as_deref(), "USER_ID")?;
                users::set_active(store, &who, true, out).await
            }
        },
        Command::Key(cmd) => match cmd {
            KeyCommand::Create {
                user_id,
                email,
                name,
            } => {
                let who = UserRef::required(user_id.as_deref(), email.as_deref(), "--user-id")?;
                keys::create(store, &who, &name, out).await
            }
            KeyCommand::List {
                user_id,
                email,
                json,
            } => {
                let who = UserRef::optional(user_id.as_deref(), email.as_deref(), "--user-id")?;
                keys::list(store, who.as_ref(), json, out).await
            }
            KeyCommand::Revoke { key_id } => keys::revoke(store, &key_id, out).await,
        },
        Command::Prune {
            older_than,
            dry_run,
            rewrite_file,
        } => {
            let request = prune::Prune {
                older_than,
                dry_run,
                rewrite_file,
            };
            prune::prune(store, request, out).await
        }
    }
}

/// The error and its causes on one line, `a: b: c`, leaving out a cause whose
/// text the error before it already ends with (the storage errors repeat their
/// source in their own message).
pub fn error_message(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.ends_with(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// How the operator named a user: by id or by e-mail address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UserRef {
    Id(String),
    Email(String),
}

impl UserRef {
    /// The id or address as the operator typed it.
    fn as_str(&self) -> &str {
        match self {
            UserRef::Id(s) | UserRef::Email(s) => s,
        }
    }

    /// At most one of the two; `id_name` is how the id is spelled in messages.
    fn optional(id: Option<&str>, email: Option<&str>, id_name: &str) -> Result<Option<UserRef>> {
        match (id, email) {
            (Some(_), Some(_)) => bail!("Provide either {id_name} or --email, not both"),
            (Some(id), None) => Ok(Some(UserRef::Id(id.to_string()))),
            (None, Some(email)) => Ok(Some(UserRef::Email(email.to_string()))),
            (None, None) => Ok(None),
        }
    }

    /// Exactly one of the two.
    fn required(id: Option<&str>, email: Option<&str>, id_name: &str) -> Result<UserRef> {
        match Self::optional(id, email, id_name)? {
            Some(who) => Ok(who),
            None => bail!("Must provide either {id_name} or --email"),
        }
    }
}

/// The user an operator named, or the reference's "not found" error.
async fn find_user(store: &Store, who: &UserRef) -> Result<User> {
    let found = match who {
        UserRef::Id(raw) => find_user_by_id(store, raw).await?,
        UserRef::Email(email) => store.get_user_by_email(email).await?,
    };
    match (found, who) {
        (Some(user), _) => Ok(user),
        (None, UserRef::Id(raw)) => bail!("User not found: {raw}"),
        (None, UserRef::Email(email)) => bail!("User not found with email: {email}"),
    }
}

/// Something that is not a UUID names no user, rather than being a syntax error:
/// the operator sees the same "not found" either way.
async fn find_user_by_id(store: &Store, raw: &str) -> Result<Option<User>> {
    match raw.parse::<ci_common::UserId>() {
        Ok(id) => Ok(store.get_user(id).await?),
        Err(_) => Ok(None),
    }
}

/// `Active`/`Inactive` as the reference shows a user's state.
fn user_status(active: bool) -> &'static str {
    if active {
        "Active"
    } else {
        "Inactive"
    }
}

/// Writes a JSON document the way the reference does (two-space indent), plus a newline.
fn write_json(out: &mut impl Write, value: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("database error: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn error_message_joins_the_chain_without_repeating_a_cause() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(Repeats(io)).context("cannot open the database at x.db");
        assert_eq!(
            error_message(&e),
            "cannot open the database at x.db: database error: disk on fire"
        );
        let e = anyhow::anyhow!("disk on fire").context("cannot write");
        assert_eq!(error_message(&e), "cannot write: disk on fire");
    }
}
