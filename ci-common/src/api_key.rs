//! API keys: how they are made, shown once, and stored only as a hash.

use crate::id::{ApiKeyId, UserId};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Every key starts with this, so that a key is recognisable in a config file or a leak scanner.
pub const KEY_PREFIX: &str = "ci_";
/// Random characters after the prefix: 30 random bytes in URL-safe base64.
pub const KEY_RANDOM_CHARS: usize = 40;
/// How much of a key is kept in clear to help an operator tell keys apart.
pub const DISPLAY_PREFIX_LEN: usize = 8;

/// A freshly generated key: the secret, shown to the user exactly once, and what is stored.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    pub secret: String,
    pub hash: String,
    pub display_prefix: String,
}

/// The RNG of the operating system failed; there is no safe fallback.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RngError(String);

/// Makes a new key: `ci_` followed by 40 URL-safe characters from the OS RNG.
pub fn generate_api_key() -> Result<GeneratedKey, RngError> {
    let mut bytes = [0u8; KEY_RANDOM_CHARS * 3 / 4];
    getrandom::getrandom(&mut bytes).map_err(|e| RngError(e.to_string()))?;
    let secret = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    Ok(GeneratedKey {
        hash: hash_api_key(&secret),
        display_prefix: secret[..DISPLAY_PREFIX_LEN].to_string(),
        secret,
    })
}

/// SHA-256 of the whole key, hex encoded: the only form of a key the database holds.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Whether a string has the shape of a key; anything else cannot be valid and
/// needs no database look-up.
pub fn looks_like_api_key(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() == KEY_RANDOM_CHARS
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// An API key as stored and listed: never the key itself, nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: ApiKeyId,
    pub user_id: UserId,
    pub name: String,
    pub key_prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub is_active: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn keys_have_the_documented_shape() {
        for _ in 0..100 {
            let k = generate_api_key().unwrap();
            assert!(k.secret.starts_with("ci_"));
            assert_eq!(k.secret.len(), 3 + 40);
            assert!(looks_like_api_key(&k.secret), "{}", k.secret);
            assert_eq!(k.hash, hash_api_key(&k.secret));
            assert_eq!(k.display_prefix, &k.secret[..8]);
        }
    }

    #[test]
    fn keys_are_unique() {
        let keys: HashSet<String> = (0..1000)
            .map(|_| generate_api_key().unwrap().secret)
            .collect();
        assert_eq!(keys.len(), 1000);
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn malformed_keys_are_recognised() {
        assert!(!looks_like_api_key(""));
        assert!(!looks_like_api_key("ci_"));
        assert!(!looks_like_api_key(
            "xx_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        ));
        assert!(!looks_like_api_key(
            "ci_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!"
        ));
        assert!(!looks_like_api_key(
            "ci_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        ));
        assert!(looks_like_api_key(
            "ci_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-_"
        ));
    }
}
