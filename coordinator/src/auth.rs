//! Who may connect: the users of the configuration file, checked the same way on
//! both front doors, and the bearer tokens Flight SQL clients get from a handshake.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sql::config::{AuthMethod, FlotillaConfig};

/// Upper bound on live bearer tokens; the oldest are dropped beyond it.
const TOKENS_MAX: usize = 10_000;

/// The configured users and the method that checks them.
#[derive(Debug)]
pub struct Users {
    method: AuthMethod,
    passwords: HashMap<String, String>,
}

impl Users {
    pub fn from_config(config: &FlotillaConfig) -> Self {
        Self {
            method: config.auth_method(),
            passwords: config
                .auth
                .users
                .iter()
                .map(|u| (u.name.clone(), u.password.clone()))
                .collect(),
        }
    }

    pub fn method(&self) -> AuthMethod {
        self.method
    }

    /// Names of the configured users.
    pub fn names(&self) -> Vec<String> {
        self.passwords.keys().cloned().collect()
    }

    /// The stored password of `user`, if the user exists.
    pub fn password(&self, user: &str) -> Option<&str> {
        self.passwords.get(user).map(String::as_str)
    }

    /// Whether `user` may connect with `password`. Under `trust` everyone may.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        if self.method == AuthMethod::Trust {
            return true;
        }
        match self.passwords.get(user) {
            Some(expected) => constant_time_eq(expected.as_bytes(), password.as_bytes()),
            None => false,
        }
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a
/// guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Random bytes from the operating system (through v4 UUIDs).
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    out.truncate(len);
    out
}

/// Bearer tokens handed out by the Flight SQL handshake; each expires `ttl`
/// after it was issued.
#[derive(Debug)]
pub struct Tokens {
    ttl: Duration,
    live: Mutex<HashMap<String, TokenEntry>>,
}

#[derive(Debug, Clone)]
struct TokenEntry {
    user: String,
    expires: Instant,
}

impl Tokens {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh token for `user`.
    pub fn issue(&self, user: &str) -> String {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(32));
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, entry| entry.expires > now);
        if live.len() >= TOKENS_MAX {
            if let Some(oldest) = live
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| k.clone())
            {
                live.remove(&oldest);
            }
        }
        live.insert(
            token.clone(),
            TokenEntry {
                user: user.to_string(),
                expires: now + self.ttl,
            },
        );
        token
    }

    /// The user a token was issued to, unless it is unknown or expired.
    pub fn check(&self, token: &str) -> Option<String> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        match live.get(token) {
            Some(entry) if entry.expires > Instant::now() => Some(entry.user.clone()),
            Some(_) => {
                live.remove(token);
                None
            }
            None => None,
        }
    }

    /// Ends a token before it expires (Flight SQL `CloseSession`).
    pub fn revoke(&self, token: &str) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }
}

/// Decodes the value of an `authorization: Basic ...` header into user and
/// password; base64 with or without padding is accepted.
pub fn decode_basic(header: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let encoded = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))?
        .trim();
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_headers_decode_with_and_without_padding() {
        assert_eq!(
            decode_basic("Basic dTpwdw"),
            Some(("u".to_string(), "pw".to_string()))
        );
        assert_eq!(
            decode_basic("Basic dTpwdw=="),
            Some(("u".to_string(), "pw".to_string()))
        );
        assert_eq!(decode_basic("Bearer abc"), None);
        assert_eq!(decode_basic("Basic !!!"), None);
    }

    #[test]
    fn tokens_expire_and_revoke() {
        let tokens = Tokens::new(Duration::from_millis(30));
        let t = tokens.issue("alice");
        assert_eq!(tokens.check(&t).as_deref(), Some("alice"));
        assert_eq!(tokens.check("forged"), None);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(tokens.check(&t), None);
        let t2 = tokens.issue("bob");
        tokens.revoke(&t2);
        assert_eq!(tokens.check(&t2), None);
    }

    #[test]
    fn users_verify_passwords() {
        let config = FlotillaConfig::from_toml(
            "[[auth.user]]\nname = \"alice\"\npassword = \"secret\"\n",
            "test",
        )
        .unwrap();
        let users = Users::from_config(&config);
        assert!(users.verify("alice", "secret"));
        assert!(!users.verify("alice", "secreT"));
        assert!(!users.verify("bob", "secret"));
    }
}
