//! The command line, as the reference implementation's `ci-admin` spells it.

use std::time::Duration;

use ci_config::{parse_duration, DatabaseArgs};
use clap::{Parser, Subcommand};

/// CI Admin - Manage users and API keys for the CI system.
#[derive(Debug, Parser)]
#[command(name = "ci-admin", version)]
pub struct Cli {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Delete now what the controller's reaper deletes over time: ended jobs
    /// older than --older-than with their output and test results, archives
    /// no job refers to any more, sessions of revoked keys and deactivated
    /// users. Queued and running jobs are never touched.
    Prune {
        /// Jobs that ended longer ago than this go (20s, 12h, 7d).
        #[arg(long, env = "CI_RETENTION", default_value = "30d", value_parser = parse_duration)]
        older_than: Duration,
        /// Report what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Rewrite a SQLite file made before this version once, so that it
        /// gives freed space back to the file system from then on. Copies
        /// the whole file and holds its write lock meanwhile: stop the
        /// services first, and have free disk space of the file's size.
        #[arg(long, conflicts_with = "dry_run")]
        rewrite_file: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a new user.
    Create {
        /// User's display name.
        #[arg(long)]
        name: String,
        /// User's email address.
        #[arg(long)]
        email: String,
    },
    /// List all users.
    List {
        /// Output as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Get user details by ID or email.
    Get {
        /// The user's ID (UUID).
        user_id: Option<String>,
        /// Get user by email instead of ID.
        #[arg(long)]
        email: Option<String>,
    },
    /// Deactivate a user; their API keys stop working.
    Deactivate {
        /// The user's ID (UUID).
        user_id: Option<String>,
        /// Name the user by email instead of ID.
        #[arg(long)]
        email: Option<String>,
    },
    /// Activate a user again.
    Activate {
        /// The user's ID (UUID).
        user_id: Option<String>,
        /// Name the user by email instead of ID.
        #[arg(long)]
        email: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a new API key for a user.
    Create {
        /// User ID (UUID).
        #[arg(long)]
        user_id: Option<String>,
        /// User email (alternative to --user-id).
        #[arg(long)]
        email: Option<String>,
        /// Descriptive name for this API key.
        #[arg(long)]
        name: String,
    },
    /// List API keys (optionally filtered by user).
    List {
        /// Filter by user ID.
        #[arg(long)]
        user_id: Option<String>,
        /// Filter by user email.
        #[arg(long)]
        email: Option<String>,
        /// Output as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key.
    Revoke { key_id: String },
}
