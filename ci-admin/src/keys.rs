//! `ci-admin key …`. A key's secret is printed once, by `create`; nothing else
//! prints any part of it, not even the stored display prefix, nor its hash.

use std::collections::HashMap;
use std::io::Write;

use anyhow::{bail, Context, Result};
use ci_common::time::to_api_string;
use ci_common::{generate_api_key, ApiKeyRecord, User};
use ci_common::{ApiKeyId, UserId};
use ci_persistence::{Store, StoreError};
use serde::Serialize;

use crate::{find_user, write_json, UserRef};

pub(crate) async fn create(
    store: &Store,
    who: &UserRef,
    name: &str,
    out: &mut impl Write,
) -> Result<()> {
    let user = find_user(store, who).await?;
    let key = generate_api_key().context("cannot generate an API key")?;
    let record = match store.create_api_key(user.id, name, &key).await {
        Ok(record) => record,
        // Deleted between the look-up and the insert.
        Err(StoreError::NotFound(_)) => bail!("User not found: {}", who.as_str()),
        Err(e) => return Err(e).context("cannot store the API key"),
    };
    writeln!(out, "\n✓ API key created successfully")?;
    writeln!(out, "\n  API Key: {}", key.secret)?;
    writeln!(out, "  Key ID:  {}", record.id)?;
    writeln!(out, "  Name:    {name}")?;
    writeln!(out, "  User:    {}", user.email)?;
    writeln!(
        out,
        "\n  ⚠️  IMPORTANT: This is the only time you'll see this key!"
    )?;
    writeln!(out, "     Save it securely now.\n")?;
    Ok(())
}

/// A key as `key list --json` shows it; the field order is the reference's.
#[derive(Serialize)]
struct KeyJson<'a> {
    id: String,
    user_id: String,
    name: &'a str,
    created_at: String,
    last_used_at: Option<String>,
    is_active: bool,
}

pub(crate) async fn list(
    store: &Store,
    who: Option<&UserRef>,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let (keys, owners) = match who {
        Some(who) => {
            let user = find_user(store, who).await?;
            let keys = store.list_api_keys(Some(user.id)).await;
            (keys, HashMap::from([(user.id, user)]))
        }
        None => {
            let keys = store.list_api_keys(None).await;
            let users = store.list_users().await.context("cannot list users")?;
            (keys, users.into_iter().map(|u| (u.id, u)).collect())
        }
    };
    let keys = keys.context("cannot list API keys")?;

    if json {
        let rows: Vec<KeyJson> = keys
            .iter()
            .map(|k| KeyJson {
                id: k.id.to_string(),
                user_id: k.user_id.to_string(),
                name: &k.name,
                created_at: to_api_string(k.created_at),
                last_used_at: k.last_used_at.map(to_api_string),
                is_active: k.is_active,
            })
            .collect();
        return write_json(out, &rows);
    }
    if keys.is_empty() {
        writeln!(out, "No API keys found.")?;
        return Ok(());
    }
    write_table(&keys, &owners, out)
}

fn write_table(
    keys: &[ApiKeyRecord],
    owners: &HashMap<UserId, User>,
    out: &mut impl Write,
) -> Result<()> {
    writeln!(
        out,
        "\n{:<38} {:<25} {:<25} {:<10}",
        "ID", "Name", "User", "Status"
    )?;
    writeln!(out, "{}", "-".repeat(100))?;
    for k in keys {
        let owner = match owners.get(&k.user_id) {
            Some(user) => user.email.clone(),
            None => k.user_id.to_string().chars().take(8).collect(),
        };
        let status = if k.is_active { "Active" } else { "Revoked" };
        writeln!(
            out,
            "{:<38} {:<25} {:<25} {:<10}",
            k.id.to_string(),
            display_name(&k.name),
            owner,
            status
        )?;
    }
    writeln!(out)?;
    Ok(())
}

pub(crate) async fn revoke(store: &Store, raw_id: &str, out: &mut impl Write) -> Result<()> {
    let Ok(id) = raw_id.parse::<ApiKeyId>() else {
        bail!("API key not found: {raw_id}");
    };
    match store.get_api_key(id).await {
        Ok(Some(key)) if !key.is_active => {
            bail!("API key {} is already revoked", display_name(&key.name))
        }
        Ok(_) => {}
        Err(e) => return Err(e).context("cannot read the API key"),
    }
    let key = match store.revoke_api_key(id).await {
        Ok(key) => key,
        Err(StoreError::NotFound(_)) => bail!("API key not found: {raw_id}"),
        Err(e) => return Err(e).context("cannot revoke the API key"),
    };
    writeln!(out, "✓ API key revoked: {}", display_name(&key.name))?;
    Ok(())
}

/// Keys may have an empty name; the table should still show something.
fn display_name(name: &str) -> &str {
    if name.is_empty() {
        "(unnamed)"
    } else {
        name
    }
}
