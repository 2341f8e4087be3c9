//! `ci-admin user …`.

use std::io::Write;

use anyhow::{bail, Context, Result};
use ci_common::time::to_api_string;
use ci_common::user::is_valid_email;
use ci_common::User;
use ci_persistence::{Store, StoreError};
use serde::Serialize;

use crate::{find_user, find_user_by_id, user_status, write_json, UserRef};

pub(crate) fn check_email(email: &str) -> Result<()> {
    if !is_valid_email(email) {
        bail!("Invalid email format: {email}");
    }
    Ok(())
}

pub(crate) fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        bail!("Name must not be blank");
    }
    Ok(())
}

pub(crate) async fn create(
    store: &Store,
    name: &str,
    email: &str,
    out: &mut impl Write,
) -> Result<()> {
    check_name(name)?;
    check_email(email)?;
    // The unique index decides, so two admins racing on one address cannot both win.
    let user = match store.create_user(name, email).await {
        Ok(user) => user,
        Err(StoreError::AlreadyExists(_)) => bail!("User with email {email} already exists"),
        Err(e) => return Err(e).context("cannot create the user"),
    };
    writeln!(out, "✓ User created successfully")?;
    writeln!(out, "  ID:    {}", user.id)?;
    writeln!(out, "  Name:  {}", user.name)?;
    writeln!(out, "  Email: {}", user.email)?;
    Ok(())
}

/// A user as `user list --json` shows it; the field order is the reference's.
#[derive(Serialize)]
struct UserJson<'a> {
    id: String,
    name: &'a str,
    email: &'a str,
    created_at: String,
    is_active: bool,
}

pub(crate) async fn list(store: &Store, json: bool, out: &mut impl Write) -> Result<()> {
    let users = store.list_users().await.context("cannot list users")?;
    if json {
        let rows: Vec<UserJson> = users
            .iter()
            .map(|u| UserJson {
                id: u.id.to_string(),
                name: &u.name,
                email: &u.email,
                created_at: to_api_string(u.created_at),
                is_active: u.is_active,
            })
            .collect();
        return write_json(out, &rows);
    }
    if users.is_empty() {
        writeln!(out, "No users found.")?;
        return Ok(());
    }
    writeln!(
        out,
        "\n{:<38} {:<20} {:<30} {:<10}",
        "ID", "Name", "Email", "Status"
    )?;
    writeln!(out, "{}", "-".repeat(100))?;
    for u in &users {
        writeln!(
            out,
            "{:<38} {:<20} {:<30} {:<10}",
            u.id.to_string(),
            u.name,
            u.email,
            user_status(u.is_active)
        )?;
    }
    writeln!(out)?;
    Ok(())
}

pub(crate) async fn get(store: &Store, who: &UserRef, out: &mut impl Write) -> Result<()> {
    let found = match who {
        UserRef::Id(raw) => find_user_by_id(store, raw).await?,
        UserRef::Email(email) => store.get_user_by_email(email).await?,
    };
    let Some(user) = found else {
        bail!("User not found: {}", who.as_str());
    };
    write_details(&user, out)
}

fn write_details(user: &User, out: &mut impl Write) -> Result<()> {
    writeln!(out, "\nUser Details:")?;
    writeln!(out, "  ID:         {}", user.id)?;
    writeln!(out, "  Name:       {}", user.name)?;
    writeln!(out, "  Email:      {}", user.email)?;
    writeln!(out, "  Created:    {}", to_api_string(user.created_at))?;
    writeln!(out, "  Status:     {}", user_status(user.is_active))?;
    writeln!(out)?;
    Ok(())
}

/// The reason a deactivated user's jobs end with.
pub const DEACTIVATED_REASON: &str = "The job was cancelled: its owner's account was deactivated";

pub(crate) async fn set_active(
    store: &Store,
    who: &UserRef,
    active: bool,
    out: &mut impl Write,
) -> Result<()> {
    let user = find_user(store, who).await?;
    let user = match store.set_user_active(user.id, active).await {
        Ok(user) => user,
        Err(StoreError::NotFound(_)) => bail!("User not found: {}", who.as_str()),
        Err(e) => return Err(e).context("cannot update the user"),
    };
    let verb = if active { "activated" } else { "deactivated" };
    writeln!(out, "✓ User {verb}: {}", user.email)?;
    if !active {
        // A deactivated user's key stops working at once; their jobs stop too
        // (the controller ends them as cancelled).
        let cancelled = store
            .request_cancel_for_user(user.id, DEACTIVATED_REASON)
            .await
            .context("cannot cancel the user's jobs")?;
        if !cancelled.is_empty() {
            writeln!(
                out,
                "  {} queued or running job(s) cancelled.",
                cancelled.len()
            )?;
        }
    }
    Ok(())
}
