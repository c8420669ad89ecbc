//! Single-use tokens for streaming URLs. Exec, Attach and PortForward each store their
//! request here and hand out `/<kind>/<token>`; the first connection to present the token
//! takes the request, so a URL cannot be replayed, and an unused token expires.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// How long a token is good for, as in kubelet's streaming server.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// At most this many tokens wait at once; more is refused rather than growing forever.
pub const MAX_TOKENS: usize = 4096;

/// Why a token cannot be issued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Too many unused tokens.
    #[error(
        "too many streaming requests are waiting for a client ({MAX_TOKENS}); try again in a minute"
    )]
    Full,
    /// No randomness.
    #[error("cannot make a token: {0}")]
    Random(String),
}

struct Entry<T> {
    value: T,
    expires: Instant,
}

/// Tokens to requests.
pub struct TokenCache<T> {
    map: Mutex<HashMap<String, Entry<T>>>,
    ttl: Duration,
}

impl<T> Default for TokenCache<T> {
    fn default() -> Self {
        Self::with_ttl(TOKEN_TTL)
    }
}

fn random_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

impl<T> TokenCache<T> {
    /// A cache whose tokens live `ttl`.
    pub fn with_ttl(ttl: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// Stores `value` under a new random token.
    pub fn insert(&self, value: T) -> Result<String, TokenError> {
        let token = random_token()?;
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, e| e.expires > now);
        if map.len() >= MAX_TOKENS {
            return Err(TokenError::Full);
        }
        map.insert(
            token.clone(),
            Entry {
                value,
                expires: now + self.ttl,
            },
        );
        Ok(token)
    }

    /// Takes the request stored under `token`, once, if it has not expired.
    pub fn take(&self, token: &str) -> Option<T> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.remove(token)?;
        (e.expires > Instant::now()).then_some(e.value)
    }

    /// Unused tokens.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// No unused tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_good_once() {
        let c = TokenCache::default();
        let t = c.insert(7).expect("token");
        assert!(t.len() >= 32 && !t.contains('/') && !t.contains('+'), "{t}");
        assert_ne!(t, c.insert(8).expect("token"), "tokens differ");
        assert_eq!(c.take(&t), Some(7));
        assert_eq!(c.take(&t), None, "no replay");
        assert_eq!(c.take("nonsense"), None);
    }

    #[test]
    fn tokens_expire() {
        let c = TokenCache::with_ttl(Duration::from_millis(10));
        let t = c.insert("x").expect("token");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(c.take(&t), None);
        c.insert("y").expect("token");
        assert_eq!(c.len(), 1, "expired tokens are swept");
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = TokenCache::default();
        for i in 0..MAX_TOKENS {
            c.insert(i).expect("token");
        }
        assert_eq!(c.insert(0), Err(TokenError::Full));
    }
}
