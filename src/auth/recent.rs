//! Credentials this process verified within the last second.
//!
//! A client sends its token with every request; looking it up each time
//! took a pooled connection (checked with a round trip first) and a query
//! before any work, on every request. A credential verified within
//! [`FOR`] is taken as verified again, if the secret presented hashes to
//! the one stored and it has not expired since.
//!
//! What a second of memory means: a token or session revoked through this
//! process stops working at once (revoking forgets everything remembered
//! here), but one revoked elsewhere (another process, `mlq token revoke`)
//! may still be let in by this process for up to a second. Single-use
//! credentials (tickets, login links) are never remembered: each is spent
//! in the database.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::secret::Presented;
use crate::db::users::{Kind, User};

/// How long a verification is remembered.
pub const FOR: Duration = Duration::from_secs(1);

/// Most credentials remembered at once; past it, stale ones are dropped,
/// then all.
const MOST: usize = 10_000;

#[derive(Default)]
pub struct Recent {
    verified: Mutex<HashMap<Uuid, Entry>>,
}

struct Entry {
    kind: Kind,
    secret_hash: Vec<u8>,
    user: User,
    expires_at: Option<DateTime<Utc>>,
    at: Instant,
}

impl Recent {
    /// The user `presented` belongs to, if it was verified here within
    /// [`FOR`], its secret matches, and it has not expired.
    pub fn user(&self, presented: &Presented) -> Option<User> {
        if presented.kind.single_use() {
            return None;
        }
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let entry = verified.get(&presented.id)?;
        let live = entry.at.elapsed() < FOR
            && entry.kind == presented.kind
            && entry.expires_at.is_none_or(|at| at > Utc::now());
        (live && presented.matches(&entry.secret_hash)).then(|| entry.user.clone())
    }

    /// Notes that `presented`, whose stored hash is `secret_hash`, was just
    /// verified as `user`'s, valid until `expires_at`.
    pub fn note(
        &self,
        presented: &Presented,
        secret_hash: Vec<u8>,
        user: &User,
        expires_at: Option<DateTime<Utc>>,
    ) {
        if presented.kind.single_use() {
            return;
        }
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= MOST && !verified.contains_key(&presented.id) {
            verified.retain(|_, e| e.at.elapsed() < FOR);
            if verified.len() >= MOST {
                verified.clear();
            }
        }
        verified.insert(
            presented.id,
            Entry {
                kind: presented.kind,
                secret_hash,
                user: user.clone(),
                expires_at,
                at: Instant::now(),
            },
        );
    }

    /// Forgets every verification: a credential was revoked (and with a
    /// token, the sessions opened with it).
    pub fn forget_all(&self) {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::secret::mint;

    fn user() -> User {
        User {
            id: Uuid::new_v4(),
            name: "ada".into(),
            admin: false,
            created_at: Utc::now(),
        }
    }

    fn presented(kind: Kind) -> (Presented, Vec<u8>) {
        let minted = mint(kind);
        (Presented::parse(&minted.text, kind).unwrap(), minted.hash)
    }

    /// A token with `id` and another token's secret.
    fn forged(id: Uuid) -> Presented {
        let other = mint(Kind::Token).text;
        let secret = &other[other.len() - 43..];
        Presented::parse(&format!("mlq_{}_{secret}", id.simple()), Kind::Token).unwrap()
    }

    #[test]
    fn a_verified_token_is_remembered_only_with_its_own_secret() {
        let recent = Recent::default();
        let (token, hash) = presented(Kind::Token);
        assert!(recent.user(&token).is_none());
        let ada = user();
        recent.note(&token, hash, &ada, None);
        assert_eq!(recent.user(&token).map(|u| u.id), Some(ada.id));
        // Another secret under the same id is not let in.
        assert!(recent.user(&forged(token.id)).is_none());
    }

    #[test]
    fn expired_revoked_and_single_use_credentials_are_not_remembered() {
        let recent = Recent::default();
        let ada = user();
        let (expired, hash) = presented(Kind::Token);
        recent.note(
            &expired,
            hash,
            &ada,
            Some(Utc::now() - chrono::Duration::seconds(1)),
        );
        assert!(recent.user(&expired).is_none());

        let (token, hash) = presented(Kind::Token);
        recent.note(&token, hash, &ada, None);
        recent.forget_all();
        assert!(recent.user(&token).is_none());

        let (ticket, hash) = presented(Kind::Ticket);
        recent.note(&ticket, hash, &ada, None);
        assert!(recent.user(&ticket).is_none());
    }
}
