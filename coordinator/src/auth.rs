//! API keys and per-key rate limiting: key generation from the OS CSPRNG, the one SHA-256 that
//! identifies a key, scopes, bearer-header parsing and a pure token bucket.
//!
//! A plaintext key exists only in the answer to `add_key` and in the request header; it must
//! never be stored, logged or echoed in an error. Everything here is pure except [`new_key`].

use std::str::FromStr;
use std::time::{Duration, Instant};

use aitbc_protocol::api::ErrorCode;
use sha2::{Digest, Sha256};

use crate::error::{Error, Refusal};

/// Prefix of every key.
pub const KEY_PREFIX: &str = "aitbc_";

/// What a key may do. `Admin` may do everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Miner,
    Client,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Miner => "miner",
            Scope::Client => "client",
            Scope::Admin => "admin",
        }
    }

    /// Whether a key of this scope may call an endpoint that needs `need`.
    pub fn allows(self, need: Scope) -> bool {
        self == Scope::Admin || self == need
    }
}

impl FromStr for Scope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Scope, Error> {
        match s {
            "miner" => Ok(Scope::Miner),
            "client" => Ok(Scope::Client),
            "admin" => Ok(Scope::Admin),
            other => Err(Error::Refused(Refusal::invalid(
                "scope",
                other,
                "expected miner, client or admin",
            ))),
        }
    }
}

/// A verified key: its row id and scope. The plaintext is never kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: i64,
    pub scope: Scope,
}

/// A fresh key: `aitbc_` + 64 lower-case hex digits (32 bytes from the OS CSPRNG).
pub fn new_key() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        aitbc_protocol::hex::encode(&bytes)
    ))
}

/// The stored identity of a key: SHA-256 of the whole key string, lower-case hex.
pub fn key_hash(key: &str) -> String {
    aitbc_protocol::hex::encode(&Sha256::digest(key.as_bytes()))
}

/// Extracts the key from the request's `Authorization` header values (all of them, in order).
/// None is 401; more than one is 400 BAD_REQUEST, since which one counts would be a guess
/// (a proxy may add one). The error never contains a key.
pub fn bearer<'a>(headers: &[&'a [u8]]) -> Result<&'a str, Refusal> {
    let unauthorized = |m: &str| Refusal::new(ErrorCode::Unauthorized, m.to_string());
    let raw = match headers {
        [] => return Err(unauthorized("missing Authorization: Bearer <key> header")),
        [one] => *one,
        many => {
            return Err(Refusal::bad_request(format!(
                "the Authorization header is given {} times; send exactly one",
                many.len()
            )))
        }
    };
    let raw = std::str::from_utf8(raw)
        .map_err(|_| unauthorized("the Authorization header is not valid text"))?;
    let key = raw
        .strip_prefix("Bearer ")
        .or_else(|| raw.strip_prefix("bearer "))
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <key>`"))?
        .trim();
    if key.is_empty() || key.len() > 256 {
        return Err(unauthorized("the key is not a valid API key"));
    }
    Ok(key)
}

/// A token bucket: `rate` tokens per second, at most `burst` banked.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token, or returns how long until one is available.
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(rate.max(1));
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst.max(1)));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// Whole seconds for `Retry-After` (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape_and_differ() {
        let a = new_key().unwrap();
        let b = new_key().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 6 + 64);
        assert!(a.starts_with(KEY_PREFIX));
        assert!(aitbc_protocol::api::is_sha256_hex(&a[6..]));
        assert_eq!(key_hash(&a).len(), 64);
        assert_ne!(key_hash(&a), key_hash(&b));
    }

    #[test]
    fn bearer_parsing_never_echoes_the_key() {
        assert_eq!(bearer(&[b"Bearer aitbc_x"]).unwrap(), "aitbc_x");
        for bad in [
            &b"Basic aitbc_secret"[..],
            b"Bearer ",
            b"aitbc_secret",
            b"\xff\xfe",
        ] {
            let e = bearer(&[bad]).unwrap_err();
            assert_eq!(e.code, ErrorCode::Unauthorized);
            assert!(!e.message.contains("secret"));
        }
        assert_eq!(bearer(&[]).unwrap_err().code, ErrorCode::Unauthorized);
        // Two headers, even two good ones: neither wins.
        let e = bearer(&[b"Bearer aitbc_secret", b"Bearer aitbc_other"]).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(
            e.message,
            "the Authorization header is given 2 times; send exactly one"
        );
    }

    #[test]
    fn scopes() {
        assert!(Scope::Admin.allows(Scope::Client));
        assert!(Scope::Miner.allows(Scope::Miner));
        assert!(!Scope::Miner.allows(Scope::Client));
        assert_eq!("client".parse::<Scope>().unwrap(), Scope::Client);
        assert!("root".parse::<Scope>().is_err());
    }

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(4, t0);
        for _ in 0..4 {
            b.take(2, 4, t0).unwrap();
        }
        let wait = b.take(2, 4, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert_eq!(retry_after_secs(wait), 1);
        b.take(2, 4, t0 + Duration::from_millis(500)).unwrap();
        assert!(b.take(2, 4, t0 + Duration::from_millis(500)).is_err());
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..4 {
            b.take(2, 4, later).unwrap();
        }
        assert!(b.take(2, 4, later).is_err());
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::from_millis(2100)), 3);
    }
}
