//! The identities of jobs and users.
//!
//! Both are random UUIDs in the database and on the wire, but they are never
//! interchangeable: a function that takes a job and a user cannot be called
//! with the two swapped, and a nested tuple of ids says which is which. On the
//! wire and in the database each is the UUID's hyphenated form, exactly as
//! before the types existed (`#[serde(transparent)]`, `Display`, `FromStr`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_identity {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new random identity (UUID version 4).
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }

            /// The identity with this UUID, as read from the database or the wire.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The all-zero identity, which no record has: a probe that must miss.
            pub const fn nil() -> Self {
                Self(Uuid::nil())
            }

            /// The UUID underneath.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }
    };
}

uuid_identity! {
    /// A job's identity, shown to users in its hyphenated form.
    JobId
}

uuid_identity! {
    /// A user's identity.
    UserId
}

uuid_identity! {
    /// An API key's identity (not the key: the record that holds its hash).
    ApiKeyId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_reads_and_writes_as_its_hyphenated_uuid() {
        let uuid = Uuid::new_v4();
        let job = JobId::from_uuid(uuid);
        assert_eq!(job.to_string(), uuid.hyphenated().to_string());
        assert_eq!(job.to_string().parse::<JobId>().unwrap(), job);
        assert_eq!(serde_json::to_string(&job).unwrap(), format!("\"{uuid}\""));
        assert_eq!(
            serde_json::from_str::<UserId>(&format!("\"{uuid}\"")).unwrap(),
            UserId::from_uuid(uuid)
        );
        assert!("not-a-uuid".parse::<JobId>().is_err());
    }
}
