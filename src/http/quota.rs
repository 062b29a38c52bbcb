//! Per-user limits: tasks waiting, bytes uploaded per UTC day, bytes
//! stored, and requests per second. Each answers 429 with `Retry-After`
//! and names the limit. Running tasks are limited where tasks are claimed
//! (`db/sql/claim.sql`): over that limit a task waits in the queue.
//!
//! Counts live in Postgres, so they hold across processes (the queued
//! count is reused briefly while far below its limit: see
//! `Quotas::queued_room`); the request rate (a token bucket per user), and
//! what a user holds open at once (uploads, live-feed connections), are
//! counted by each process on its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{Timelike, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::error::ApiError;
use crate::config::Settings;
use crate::db::{self, users::User};

/// A limit a caller went over.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Exceeded {
    /// The setting's name, without `quota_` for quotas: `queued_tasks`,
    /// `auth_failures_per_second`.
    pub limit: &'static str,
    /// Seconds until trying again can succeed.
    pub retry_after: u64,
    message: String,
}

impl Exceeded {
    pub fn code(&self) -> &'static str {
        if self.limit.ends_with("per_second") {
            "rate_limited"
        } else {
            "quota_exceeded"
        }
    }
}

/// The limits, each per user; 0 means none.
#[derive(Debug, Default)]
pub struct Quotas {
    pub queued_tasks: u64,
    pub upload_bytes_per_day: u64,
    pub stored_bytes: u64,
    /// Each user's queued count as last read, and this process's
    /// submissions since (see [`Quotas::queued_room`]).
    recent: Mutex<HashMap<Uuid, Recent>>,
}

#[derive(Debug)]
struct Recent {
    queued: u64,
    at: Instant,
}

/// How long a queued count far below the limit is trusted.
const RECENT_FOR: Duration = Duration::from_secs(5);

impl From<&Settings> for Quotas {
    fn from(s: &Settings) -> Self {
        Self {
            queued_tasks: s.quota_queued_tasks,
            upload_bytes_per_day: s.quota_upload_bytes_per_day,
            stored_bytes: s.quota_stored_bytes,
            recent: Mutex::default(),
        }
    }
}

/// Seconds to the next UTC midnight, when the day's uploads start afresh.
fn until_tomorrow() -> u64 {
    let now = Utc::now();
    86_400 - u64::from(now.num_seconds_from_midnight()).min(86_399)
}

impl Quotas {
    /// Before an upload is read: refuses at once a caller already at a
    /// limit the upload would pass (or that its declared size would), so
    /// no bytes are sent for nothing. [`Quotas::admit`] makes the exact
    /// check once the size is known.
    pub async fn before_upload(
        &self,
        client: &impl GenericClient,
        user: &User,
        declared: Option<u64>,
    ) -> Result<(), ApiError> {
        let declared = declared.unwrap_or(0);
        if self.upload_bytes_per_day > 0 {
            let today = db::usage::uploaded_today(client, user.id).await? as u64;
            self.check_upload(user, today, declared)?;
        }
        if self.stored_bytes > 0 {
            let stored = db::usage::stored_bytes(client, user.id).await? as u64;
            self.check_stored(user, stored, declared)?;
        }
        Ok(())
    }

    /// Before a task is queued again (a retry): the user's queued tasks
    /// must leave room for it.
    pub async fn before_requeue(
        &self,
        client: &impl GenericClient,
        user: &User,
    ) -> Result<(), ApiError> {
        self.queued_room(client, user).await
    }

    /// Whether `user` may queue one more task. Counting a user's queued
    /// tasks reads up to the limit's worth of index entries, on every
    /// submission; so while a count this process made in the last few
    /// seconds, plus its submissions since, is under a quarter of the
    /// limit, that is answer enough. From a quarter up every submission
    /// counts afresh. The limit can so be passed only if other processes
    /// queue three quarters of it for the user within those seconds (at
    /// the default rate limit, more than ten processes flat out).
    async fn queued_room(&self, client: &impl GenericClient, user: &User) -> Result<(), ApiError> {
        if self.queued_tasks == 0 {
            return Ok(());
        }
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = recent.get_mut(&user.id) {
                if r.at.elapsed() < RECENT_FOR && r.queued < self.queued_tasks / 4 {
                    r.queued += 1;
                    return Ok(());
                }
            }
        }
        let queued = db::usage::queued(client, user.id, self.queued_tasks).await? as u64;
        self.check_queued(user, queued)?;
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() >= MAX_BUCKETS {
            recent.retain(|_, r| r.at.elapsed() < RECENT_FOR);
        }
        recent.insert(
            user.id,
            Recent {
                queued: queued + 1,
                at: Instant::now(),
            },
        );
        Ok(())
    }

    fn check_queued(&self, user: &User, queued: u64) -> Result<(), ApiError> {
        if queued >= self.queued_tasks {
            return Err(ApiError::OverQuota(Exceeded {
                limit: "queued_tasks",
                retry_after: 30,
                message: format!(
                    "{} has {queued} tasks waiting, the most one user may have \
                     (quota_queued_tasks = {}); submit more as they start",
                    user.name, self.queued_tasks
                ),
            }));
        }
        Ok(())
    }

    /// In the submission's transaction: checks every limit with the
    /// submission's `bytes`, and counts them against today's uploads.
    ///
    /// An upload locks the user's other uploads until it commits, so two
    /// cannot both pass the byte limits. Submissions without files take no
    /// lock (serializing them cut one user's submission rate tenfold): the
    /// queued limit can be passed by the few submitted at the same moment.
    pub async fn admit(
        &self,
        tx: &impl GenericClient,
        user: &User,
        bytes: u64,
    ) -> Result<(), ApiError> {
        if bytes > 0 {
            db::usage::lock_user(tx, user.id).await?;
        }
        self.queued_room(tx, user).await?;
        if bytes == 0 {
            return Ok(());
        }
        if self.stored_bytes > 0 {
            let stored = db::usage::stored_bytes(tx, user.id).await? as u64;
            self.check_stored(user, stored, bytes)?;
        }
        let today = db::usage::add_upload(tx, user.id, bytes as i64).await? as u64;
        if self.upload_bytes_per_day > 0 {
            self.check_upload(user, today - bytes, bytes)?;
        }
        Ok(())
    }

    fn check_upload(&self, user: &User, today: u64, more: u64) -> Result<(), ApiError> {
        let limit = self.upload_bytes_per_day;
        if today.saturating_add(more) > limit || (more == 0 && today >= limit) {
            return Err(ApiError::OverQuota(Exceeded {
                limit: "upload_bytes_per_day",
                retry_after: until_tomorrow(),
                message: format!(
                    "{} uploaded {today} bytes today (UTC); with this upload's {more} that \
                     passes the daily limit of {limit} bytes (quota_upload_bytes_per_day)",
                    user.name
                ),
            }));
        }
        Ok(())
    }

    fn check_stored(&self, user: &User, stored: u64, more: u64) -> Result<(), ApiError> {
        let limit = self.stored_bytes;
        if stored.saturating_add(more) > limit || (more == 0 && stored >= limit) {
            return Err(ApiError::OverQuota(Exceeded {
                limit: "stored_bytes",
                retry_after: 60,
                message: format!(
                    "{}'s tasks hold {stored} bytes; with this upload's {more} that passes \
                     the limit of {limit} bytes (quota_stored_bytes): delete tasks or models \
                     to make room",
                    user.name
                ),
            }));
        }
        Ok(())
    }
}

/// Requests per second per user, as a token bucket: `rate` a second, up to
/// a burst of two seconds' worth.
pub struct RateLimiter {
    buckets: Buckets<Uuid>,
}

impl RateLimiter {
    /// `rate` requests a second per user; 0: no limit.
    pub fn new(rate: u32) -> Self {
        Self {
            buckets: Buckets::new(rate),
        }
    }

    /// Takes one request from `user`'s allowance.
    pub fn check(&self, user: &User) -> Result<(), Exceeded> {
        self.buckets.take(user.id).map_err(|wait| Exceeded {
            limit: "requests_per_second",
            retry_after: wait.as_secs().max(1),
            message: format!(
                "{} sent more than {} requests a second (quota_requests_per_second); \
                 slow down",
                user.name, self.buckets.rate
            ),
        })
    }
}

/// Credentials refused per client address and second, as a token bucket
/// like [`RateLimiter`]'s. Each lookup of a credential not known to be
/// live takes one from the address's allowance (so lookups in flight count
/// too), and a lookup that finds it live gives it back. An address whose
/// allowance is spent gets 429 without a lookup until it refills: guessing
/// is slowed down, and a flood of made-up tokens cannot keep the database
/// busy. IPv6 addresses count by their /64, which one client usually holds
/// whole.
pub struct FailureLimiter {
    buckets: Buckets<IpAddr>,
}

impl FailureLimiter {
    /// `rate` refusals a second per address; 0: no limit.
    pub fn new(rate: u32) -> Self {
        Self {
            buckets: Buckets::new(rate),
        }
    }

    fn key(address: IpAddr) -> IpAddr {
        match address.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            v4 => v4,
        }
    }

    /// Takes one lookup from `address`'s allowance, or says it has none.
    pub fn take(&self, address: Option<IpAddr>) -> Result<(), Exceeded> {
        let Some(address) = address else {
            return Ok(());
        };
        self.buckets
            .take(Self::key(address))
            .map_err(|wait| Exceeded {
                limit: "auth_failures_per_second",
                retry_after: wait.as_secs().max(1),
                message: format!(
                    "more than {} refused credentials a second came from this address \
                     (auth_failures_per_second); wait before trying again",
                    self.buckets.rate
                ),
            })
    }

    /// Gives back what a lookup took: its credential was live, or the
    /// lookup could not be made.
    pub fn give_back(&self, address: Option<IpAddr>) {
        if let Some(address) = address {
            self.buckets.give_back(&Self::key(address));
        }
    }
}

/// Token buckets by key: `rate` a second, up to a burst of two seconds'
/// worth.
struct Buckets<K> {
    rate: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept before full (idle) ones are dropped.
const MAX_BUCKETS: usize = 10_000;

impl<K: std::hash::Hash + Eq> Buckets<K> {
    fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn burst(&self) -> f64 {
        (self.rate * 2.0).max(1.0)
    }

    /// Takes one from `key`'s allowance, or says how long until there is one.
    fn take(&self, key: K) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let burst = self.burst();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            let rate = self.rate;
            buckets.retain(|_, b| b.tokens + rate * now.duration_since(b.at).as_secs_f64() < burst);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + self.rate * now.duration_since(bucket.at).as_secs_f64()).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
    }

    /// Returns one taken from `key`'s allowance.
    fn give_back(&self, key: &K) {
        let burst = self.burst();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = buckets.get_mut(key) {
            bucket.tokens = (bucket.tokens + 1.0).min(burst);
        }
    }
}

/// What each user may hold at once on this process (uploads in flight,
/// live-feed connections): a count per user, given back when the
/// [`UserSlot`] drops.
pub struct UserSlots {
    limit: usize,
    /// The setting's name without `quota_`.
    setting: &'static str,
    /// What a slot is, for the message: "uploads at once".
    what: &'static str,
    held: std::sync::Arc<Mutex<HashMap<Uuid, usize>>>,
}

/// One slot of one user's, held until dropped.
pub struct UserSlot {
    user: Uuid,
    held: Option<std::sync::Arc<Mutex<HashMap<Uuid, usize>>>>,
}

impl UserSlots {
    /// `limit` per user; 0: no limit.
    pub fn new(limit: usize, setting: &'static str, what: &'static str) -> Self {
        Self {
            limit,
            setting,
            what,
            held: Default::default(),
        }
    }

    /// Takes one of `user`'s slots, or says they hold all of theirs.
    pub fn take(&self, user: &User) -> Result<UserSlot, Exceeded> {
        if self.limit == 0 {
            return Ok(UserSlot {
                user: user.id,
                held: None,
            });
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(user.id).or_default();
        if *count >= self.limit {
            return Err(Exceeded {
                limit: self.setting,
                retry_after: 1,
                message: format!(
                    "{} has {} {} on this process, the most one user may (quota_{}); \
                     retry when one ends",
                    user.name, self.limit, self.what, self.setting
                ),
            });
        }
        *count += 1;
        Ok(UserSlot {
            user: user.id,
            held: Some(self.held.clone()),
        })
    }

    /// Slots `user` holds now.
    #[cfg(test)]
    fn held_by(&self, user: Uuid) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&user).copied().unwrap_or(0)
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let Some(held) = &self.held else { return };
        let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: Uuid::new_v4(),
            name: "alice".into(),
            admin: false,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn lookups_in_flight_count_and_live_credentials_give_theirs_back() {
        let limiter = FailureLimiter::new(1);
        let here = Some("203.0.113.9".parse().unwrap());
        // A burst of two lookups at once, refused or not yet answered...
        limiter.take(here).expect("first");
        limiter.take(here).expect("second");
        let refused = limiter.take(here).expect_err("a third at once");
        assert_eq!(refused.limit, "auth_failures_per_second");
        assert_eq!(refused.code(), "rate_limited");
        // ...and one that found its credential live gives its place back.
        limiter.give_back(here);
        limiter.take(here).expect("after a live one");
        // Other addresses have their own allowance.
        limiter
            .take(Some("203.0.113.10".parse().unwrap()))
            .expect("another address");
    }

    #[test]
    fn an_ipv6_client_counts_as_its_slash_64_and_a_mapped_ipv4_as_itself() {
        let limiter = FailureLimiter::new(1);
        limiter.take(Some("2001:db8::1".parse().unwrap())).unwrap();
        limiter
            .take(Some("2001:db8::ffff:2".parse().unwrap()))
            .unwrap();
        assert!(limiter.take(Some("2001:db8::3".parse().unwrap())).is_err());
        assert!(limiter
            .take(Some("2001:db8:0:1::1".parse().unwrap()))
            .is_ok());
        limiter.take(Some("198.51.100.1".parse().unwrap())).unwrap();
        limiter.take(Some("198.51.100.1".parse().unwrap())).unwrap();
        assert!(limiter
            .take(Some("::ffff:198.51.100.1".parse().unwrap()))
            .is_err());
    }

    #[test]
    fn the_rate_allows_a_burst_then_refuses_naming_the_limit() {
        let limiter = RateLimiter::new(5);
        let (alice, bob) = (user(), user());
        for _ in 0..10 {
            limiter.check(&alice).expect("within the burst");
        }
        let refused = limiter.check(&alice).unwrap_err();
        assert_eq!(refused.limit, "requests_per_second");
        assert_eq!(refused.code(), "rate_limited");
        assert!(refused.retry_after >= 1);
        assert!(refused.to_string().contains("alice"), "{refused}");
        // Another user's allowance is their own.
        limiter.check(&bob).expect("bob is not alice");
    }

    #[test]
    fn a_user_holds_at_most_their_slots_and_gets_each_back_when_it_drops() {
        let slots = UserSlots::new(2, "uploads", "uploads at once");
        let (alice, bob) = (user(), user());
        let first = slots.take(&alice).unwrap();
        let second = slots.take(&alice).unwrap();
        let refused = slots.take(&alice).err().expect("a third is refused");
        assert_eq!(refused.limit, "uploads");
        assert_eq!(refused.code(), "quota_exceeded");
        assert!(refused.to_string().contains("quota_uploads"), "{refused}");
        assert!(!refused.to_string().contains("  "), "{refused}");
        let _bobs = slots.take(&bob).expect("bob's slots are his own");
        drop(first);
        let _third = slots.take(&alice).expect("a slot given back is free again");
        drop(second);
        assert_eq!(slots.held_by(alice.id), 1);
        let unlimited = UserSlots::new(0, "sockets", "connections");
        let held: Vec<_> = (0..1000).map(|_| unlimited.take(&alice).unwrap()).collect();
        assert_eq!(held.len(), 1000);
    }

    #[test]
    fn no_rate_means_no_limit() {
        let limiter = RateLimiter::new(0);
        let alice = user();
        for _ in 0..10_000 {
            limiter.check(&alice).unwrap();
        }
    }

    #[test]
    fn the_daily_upload_limit_counts_what_was_sent_today() {
        let quotas = Quotas {
            upload_bytes_per_day: 100,
            ..Quotas::default()
        };
        let alice = user();
        quotas.check_upload(&alice, 60, 40).unwrap();
        let refused = quotas.check_upload(&alice, 60, 41).unwrap_err();
        let ApiError::OverQuota(e) = refused else {
            panic!("{refused:?}")
        };
        assert_eq!(e.limit, "upload_bytes_per_day");
        assert!(e.retry_after >= 1 && e.retry_after <= 86_400);
        // At the limit, even an upload of unknown size is refused early.
        assert!(quotas.check_upload(&alice, 100, 0).is_err());
        assert!(quotas.check_upload(&alice, 99, 0).is_ok());
    }
}
