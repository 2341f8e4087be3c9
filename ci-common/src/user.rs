//! Accounts.

use crate::id::UserId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub name: String,
    pub email: String,
    pub created_at: DateTime<Utc>,
    pub is_active: bool,
}

/// Whether an address has the shape `local@domain.tld`: a non-empty local part of
/// letters, digits and `._%+-`, a domain of letters, digits, `.` and `-`, and a
/// top-level domain of at least two letters. The same rule as the reference
/// implementation's pattern, written out so no regex engine is needed.
pub fn is_valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let Some((host, tld)) = domain.rsplit_once('.') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._%+-".contains(&b));
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b));
    let tld_ok = tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic());
    local_ok && host_ok && tld_ok
}

#[cfg(test)]
mod tests {
    use super::is_valid_email;

    #[test]
    fn accepts_ordinary_addresses() {
        for e in [
            "a@b.co",
            "first.last+tag@mail.example.org",
            "x_y-z%1@sub-domain.io",
        ] {
            assert!(is_valid_email(e), "{e}");
        }
    }

    #[test]
    fn rejects_malformed_addresses() {
        for e in [
            "", "plain", "@b.co", "a@", "a@b", "a@b.c", "a@@b.co", "a b@c.de", "a@b.c0m", "a@.com",
        ] {
            assert!(!is_valid_email(e), "{e}");
        }
    }
}
