//! What this process remembers of the credentials it verified.
//!
//! A client sends its token with every request; looking it up each time
//! took a pooled connection (checked with a round trip first) and a query
//! before any work, on every request. A credential verified within
//! [`FOR`] is taken as verified again, if the secret presented hashes to
//! the one stored, it is of the kind presented, and it has not expired
//! since.
//!
//! What a second of memory means: a token or session revoked through this
//! process stops working at once (revoking forgets its user's credentials,
//! and a lookup that was in flight across the revocation is not
//! remembered), but one revoked elsewhere (another process, `mlq token
//! revoke`) may still be let in by this process for up to a second.
//! Single-use credentials (tickets, login links) are never remembered:
//! each is spent in the database.
//!
//! Longer, for [`KNOWN_FOR`] (a ticket: its life), it keeps which
//! credentials were live here lately, with their kind and stored hash:
//! presented with their own secret, those are looked up even from an
//! address that sent too many refused credentials, so one client cannot
//! lock out the others already working here from the same address
//! (`auth_failures_per_second`). A made-up secret under a known id gets
//! no such pass.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::secret::Presented;
use crate::db::users::{Kind, User};

/// How long a verification is remembered.
pub const FOR: Duration = Duration::from_secs(1);

/// How long a credential id seen live stays known.
pub const KNOWN_FOR: Duration = Duration::from_secs(15 * 60);

/// Most entries of each kind remembered at once; past it, stale ones are
/// dropped, then all.
const MOST: usize = 10_000;

#[derive(Default)]
pub struct Recent {
    memory: Mutex<Memory>,
    /// Bumped by every revocation: a lookup that began before it is not
    /// remembered.
    generation: AtomicU64,
}

#[derive(Default)]
struct Memory {
    verified: HashMap<Uuid, Entry>,
    known: HashMap<Uuid, Known>,
}

struct Known {
    kind: Kind,
    secret_hash: Vec<u8>,
    until: Instant,
}

struct Entry {
    kind: Kind,
    secret_hash: Vec<u8>,
    user: User,
    expires_at: Option<DateTime<Utc>>,
    at: Instant,
}

/// Where a lookup began, for [`Recent::note`].
#[derive(Debug, Clone, Copy)]
pub struct Generation(u64);

impl Recent {
    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user `presented` belongs to, if it was verified here within
    /// [`FOR`], is of the kind presented, its secret matches, and it has
    /// not expired.
    pub fn user(&self, presented: &Presented) -> Option<User> {
        if presented.kind.single_use() {
            return None;
        }
        let (secret_hash, user) = {
            let memory = self.memory();
            let entry = memory.verified.get(&presented.id)?;
            let live = entry.at.elapsed() < FOR
                && entry.kind == presented.kind
                && entry.expires_at.is_none_or(|at| at > Utc::now());
            if !live {
                return None;
            }
            (entry.secret_hash.clone(), entry.user.clone())
        };
        presented.matches(&secret_hash).then_some(user)
    }

    /// To take before looking a credential up, and give to [`Self::note`].
    pub fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::SeqCst))
    }

    /// Notes that `presented`, whose stored hash is `secret_hash`, was
    /// verified as `user`'s, valid until `expires_at`, by a lookup that
    /// began at `generation`.
    pub fn note(
        &self,
        generation: Generation,
        presented: &Presented,
        secret_hash: Vec<u8>,
        user: &User,
        expires_at: Option<DateTime<Utc>>,
    ) {
        let mut memory = self.memory();
        note_known(&mut memory.known, presented, secret_hash.clone(), KNOWN_FOR);
        // Checked under the lock `forget_user` bumps it under: a lookup
        // that read the credential before a revocation cannot be
        // remembered after it.
        if presented.kind.single_use() || generation.0 != self.generation.load(Ordering::SeqCst) {
            return;
        }
        let verified = &mut memory.verified;
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

    /// Notes a credential minted here, live for `ttl`, as known.
    pub fn vouch(&self, minted: &Presented, ttl: Duration) {
        note_known(&mut self.memory().known, minted, minted.hash(), ttl);
    }

    /// Whether `presented`, with its own secret and kind, was live here
    /// lately.
    pub fn known(&self, presented: &Presented) -> bool {
        let secret_hash = {
            let memory = self.memory();
            match memory.known.get(&presented.id) {
                Some(k) if k.kind == presented.kind && k.until > Instant::now() => {
                    k.secret_hash.clone()
                }
                _ => return false,
            }
        };
        presented.matches(&secret_hash)
    }

    /// Forgets that credential `id` was live: it was refused since.
    pub fn unknown(&self, id: Uuid) {
        self.memory().known.remove(&id);
    }

    /// Forgets every verification of `user`'s credentials: one of them was
    /// revoked (and with a token, the sessions opened with it, which are
    /// the same user's).
    pub fn forget_user(&self, user: Uuid) {
        let mut memory = self.memory();
        self.generation.fetch_add(1, Ordering::SeqCst);
        memory.verified.retain(|_, e| e.user.id != user);
    }

    #[cfg(test)]
    fn age(&self, by: Duration) {
        for entry in self.memory().verified.values_mut() {
            entry.at = entry.at.checked_sub(by).unwrap_or(entry.at);
        }
    }
}

fn note_known(
    known: &mut HashMap<Uuid, Known>,
    presented: &Presented,
    secret_hash: Vec<u8>,
    ttl: Duration,
) {
    if known.len() >= MOST && !known.contains_key(&presented.id) {
        let now = Instant::now();
        known.retain(|_, k| k.until > now);
        // Still full of live ones: those stay, and this one goes without.
        if known.len() >= MOST {
            return;
        }
    }
    known.insert(
        presented.id,
        Known {
            kind: presented.kind,
            secret_hash,
            until: Instant::now() + ttl,
        },
    );
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

    fn presented(kind: Kind) -> (Presented, Vec<u8>, String) {
        let minted = mint(kind);
        (
            Presented::parse(&minted.text, kind).unwrap(),
            minted.hash,
            minted.text,
        )
    }

    /// A token with `id` and `secret`, the last 43 characters of a
    /// credential's text.
    fn token(id: Uuid, text: &str) -> Presented {
        let secret = &text[text.len() - 43..];
        Presented::parse(&format!("mlq_{}_{secret}", id.simple()), Kind::Token).unwrap()
    }

    #[test]
    fn a_verified_token_is_remembered_for_a_second_with_its_own_secret() {
        let recent = Recent::default();
        let (t, hash, _) = presented(Kind::Token);
        assert!(recent.user(&t).is_none());
        let ada = user();
        recent.note(recent.generation(), &t, hash, &ada, None);
        assert_eq!(recent.user(&t).map(|u| u.id), Some(ada.id));
        // Another secret under the same id is not let in.
        let (_, _, other) = presented(Kind::Token);
        assert!(recent.user(&token(t.id, &other)).is_none());
        recent.age(FOR);
        assert!(recent.user(&t).is_none());
        // Still known to be live, with its own secret only.
        assert!(recent.known(&t));
        assert!(!recent.known(&token(t.id, &other)));
        recent.unknown(t.id);
        assert!(!recent.known(&t));
    }

    #[test]
    fn a_minted_ticket_is_known_for_its_life_and_a_session_is_not_known_as_a_token() {
        let recent = Recent::default();
        let (ticket, _, _) = presented(Kind::Ticket);
        recent.vouch(&ticket, Duration::from_secs(30));
        assert!(recent.known(&ticket));
        recent.vouch(&ticket, Duration::ZERO);
        assert!(!recent.known(&ticket));
        let (session, hash, text) = presented(Kind::Session);
        recent.note(recent.generation(), &session, hash, &user(), None);
        assert!(recent.known(&session));
        assert!(!recent.known(&token(session.id, &text)));
    }

    #[test]
    fn a_session_is_no_bearer_token() {
        let recent = Recent::default();
        let (session, hash, text) = presented(Kind::Session);
        recent.note(recent.generation(), &session, hash, &user(), None);
        assert!(recent.user(&session).is_some());
        // Its id and secret, presented as an API token (which would skip
        // the CSRF check), are refused.
        assert!(recent.user(&token(session.id, &text)).is_none());
    }

    #[test]
    fn expired_revoked_and_single_use_credentials_are_not_remembered() {
        let recent = Recent::default();
        let ada = user();
        let (expired, hash, _) = presented(Kind::Token);
        let past = Utc::now() - chrono::Duration::seconds(1);
        recent.note(recent.generation(), &expired, hash, &ada, Some(past));
        assert!(recent.user(&expired).is_none());

        let (t, hash, _) = presented(Kind::Token);
        recent.note(recent.generation(), &t, hash.clone(), &ada, None);
        recent.forget_user(ada.id);
        assert!(recent.user(&t).is_none());
        // A lookup that began before the revocation is not remembered.
        let before = recent.generation();
        recent.forget_user(ada.id);
        recent.note(before, &t, hash, &ada, None);
        assert!(recent.user(&t).is_none());

        let (ticket, hash, _) = presented(Kind::Ticket);
        recent.note(recent.generation(), &ticket, hash, &ada, None);
        assert!(recent.user(&ticket).is_none());
    }

    #[test]
    fn revoking_forgets_only_that_users_credentials() {
        let recent = Recent::default();
        let (ada, bob) = (user(), user());
        let (a, a_hash, _) = presented(Kind::Token);
        let (b, b_hash, _) = presented(Kind::Token);
        recent.note(recent.generation(), &a, a_hash, &ada, None);
        recent.note(recent.generation(), &b, b_hash, &bob, None);
        recent.forget_user(ada.id);
        assert!(recent.user(&a).is_none());
        assert_eq!(recent.user(&b).map(|u| u.id), Some(bob.id));
    }
}
