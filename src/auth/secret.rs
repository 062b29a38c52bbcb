//! Credential strings: `<prefix>_<id>_<secret>`.
//!
//! The id (32 hex digits) names the stored row; the secret (256 random
//! bits, base64url) is kept only as its SHA-256 and compared in constant
//! time. A fast hash is enough: the secret is random, not a password, so
//! there is nothing to brute-force that a slow hash would protect. The
//! prefix says what the string is (`mlq` an API token, `mlqs` a session,
//! `mlqt` a WebSocket ticket, `mlql` a login code), so a leaked one is
//! recognisable by secret scanners and in logs.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::db::users::Kind;

/// A freshly made credential: what to store and what to hand out once.
pub struct Minted {
    pub id: Uuid,
    pub hash: Vec<u8>,
    /// The whole string the holder presents.
    pub text: String,
}

/// A presented credential, split into its parts.
#[derive(Debug, PartialEq, Eq)]
pub struct Presented {
    pub kind: Kind,
    pub id: Uuid,
    secret: String,
}

fn prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Token => "mlq",
        Kind::Session => "mlqs",
        Kind::Ticket => "mlqt",
        Kind::Login => "mlql",
    }
}

/// Makes a new credential of `kind` from the operating system's CSPRNG.
pub fn mint(kind: Kind) -> Minted {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    let secret = URL_SAFE_NO_PAD.encode(bytes);
    let id = Uuid::new_v4();
    Minted {
        id,
        hash: hash(&secret),
        text: format!("{}_{}_{secret}", prefix(kind), id.simple()),
    }
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

impl Presented {
    /// Splits a credential string; `None` if it is not one (wrong shape,
    /// or of another kind than `kind`).
    pub fn parse(text: &str, kind: Kind) -> Option<Self> {
        let rest = text.strip_prefix(prefix(kind))?.strip_prefix('_')?;
        let (id, secret) = rest.split_at_checked(32)?;
        let secret = secret.strip_prefix('_')?;
        // 32 bytes in base64url without padding.
        if secret.len() != 43
            || !secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Self {
            kind,
            id: Uuid::try_parse(id).ok()?,
            secret: secret.to_owned(),
        })
    }

    /// Whether the secret hashes to `stored`, in time independent of where
    /// the two differ.
    pub fn matches(&self, stored: &[u8]) -> bool {
        hash(&self.secret).ct_eq(stored).into()
    }

    /// What is stored of the secret.
    pub fn hash(&self) -> Vec<u8> {
        hash(&self.secret)
    }

    /// The session's CSRF token: derived from its secret, so it needs no
    /// storage, and unknown to anyone who cannot read the cookie.
    pub fn csrf_token(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"mlq csrf\0");
        h.update(self.secret.as_bytes());
        URL_SAFE_NO_PAD.encode(h.finalize())
    }
}

/// Compares two strings in constant time (for their length).
pub fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_credentials_parse_and_match_only_their_own_hash() {
        let a = mint(Kind::Token);
        let b = mint(Kind::Token);
        assert!(a.text.starts_with("mlq_"));
        let parsed = Presented::parse(&a.text, Kind::Token).expect("parses");
        assert_eq!(parsed.id, a.id);
        assert!(parsed.matches(&a.hash));
        assert!(!parsed.matches(&b.hash));
        assert_ne!(a.text, b.text);
        // At least 128 bits of randomness: 43 base64 characters = 256 bits.
        // (The secret's alphabet includes '_', so count from the front.)
        let secret = &a.text["mlq_".len() + 32 + 1..];
        assert_eq!(secret.len(), 43);
        assert_eq!(parsed.secret, secret);
    }

    #[test]
    fn other_kinds_and_mangled_strings_do_not_parse() {
        let t = mint(Kind::Token);
        assert!(Presented::parse(&t.text, Kind::Session).is_none());
        let s = mint(Kind::Session);
        assert!(Presented::parse(&s.text, Kind::Token).is_none());
        for bad in [
            "",
            "mlq_",
            "Bearer x",
            &t.text[..t.text.len() - 1],
            &format!("{}A", t.text),
            &t.text.replacen("mlq_", "mlq__", 1),
            &format!("mlq_{}_{}", "g".repeat(32), "a".repeat(43)),
            &format!("mlq_{}_{}", "0".repeat(32), "é".repeat(22)),
        ] {
            assert!(Presented::parse(bad, Kind::Token).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_csrf_token_follows_the_session_secret() {
        let a = Presented::parse(&mint(Kind::Session).text, Kind::Session).unwrap();
        let b = Presented::parse(&mint(Kind::Session).text, Kind::Session).unwrap();
        assert_eq!(a.csrf_token(), a.csrf_token());
        assert_ne!(a.csrf_token(), b.csrf_token());
        assert!(same(&a.csrf_token(), &a.csrf_token()));
        assert!(!same(&a.csrf_token(), &b.csrf_token()));
    }
}
