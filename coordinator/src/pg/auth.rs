//! Password checks and TLS for the Postgres front door.
//!
//! The configured users are checked with the method in force: SCRAM-SHA-256 (the
//! default once users exist), cleartext or MD5 when configured so, or not at all
//! under `trust`. pgwire runs the mechanisms; this module feeds them the users.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use pgwire::api::auth::cleartext::CleartextPasswordAuth;
use pgwire::api::auth::md5pass::{hash_md5_password, Md5PasswordAuth};
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth, ScramSecret};
use pgwire::api::auth::{
    AuthDriver, AuthSource, DefaultServerParameterProvider, LoginInfo, Password,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::tokio::tokio_rustls::rustls::pki_types::pem::PemObject;
use pgwire::tokio::tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use pgwire::tokio::tokio_rustls::rustls::ServerConfig;
use pgwire::tokio::tokio_rustls::TlsAcceptor;
use sql::config::{AuthMethod, TlsConfig};

use crate::auth::{random_bytes, Users};
use crate::error::{QueryError, Result};

/// SCRAM iterations, as PostgreSQL's default.
const SCRAM_ITERATIONS: usize = 4096;

/// What the startup handler needs to authenticate a connection; `None` in
/// [`PgAuth::new`]'s result means `trust`.
pub struct PgAuth {
    pub driver: AuthDriver<DefaultServerParameterProvider>,
    pub mechanism: Arc<dyn AuthMechanismFactory>,
}

impl PgAuth {
    pub fn new(users: Arc<Users>) -> Option<Self> {
        let source = Arc::new(UserSource::new(users.clone()));
        let mechanism: Arc<dyn AuthMechanismFactory> = match users.method() {
            AuthMethod::Trust => return None,
            AuthMethod::ScramSha256 => {
                let mut scram = ScramAuth::new(source);
                scram.set_iterations(SCRAM_ITERATIONS);
                Arc::new(scram)
            }
            AuthMethod::Password => Arc::new(CleartextPasswordAuth::new(source)),
            AuthMethod::Md5 => Arc::new(Md5PasswordAuth::new(source)),
        };
        Some(Self {
            driver: AuthDriver::new(DefaultServerParameterProvider::default()),
            mechanism,
        })
    }
}

/// The configured users as pgwire asks for them. SCRAM verifiers are derived
/// once, at start-up.
#[derive(Debug)]
struct UserSource {
    users: Arc<Users>,
    verifiers: HashMap<String, (Vec<u8>, Vec<u8>)>,
}

impl UserSource {
    fn new(users: Arc<Users>) -> Self {
        let mut verifiers = HashMap::new();
        if users.method() == AuthMethod::ScramSha256 {
            for name in users.names() {
                if let Some(password) = users.password(&name) {
                    let salt = random_bytes(16);
                    let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
                    verifiers.insert(name, (salt, salted));
                }
            }
        }
        Self { users, verifiers }
    }
}

fn unknown_user(login: &LoginInfo) -> PgWireError {
    PgWireError::InvalidPassword(login.user().unwrap_or_default().to_owned())
}

#[async_trait]
impl AuthSource for UserSource {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        let password = self
            .users
            .password(user)
            .ok_or_else(|| unknown_user(login))?;
        match self.users.method() {
            AuthMethod::Md5 => {
                let salt = random_bytes(4);
                let hashed = hash_md5_password(user, password, &salt);
                Ok(Password::new(Some(salt), hashed.into_bytes()))
            }
            _ => Ok(Password::new(None, password.as_bytes().to_vec())),
        }
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let user = login.user().unwrap_or_default();
        let secret = match self.verifiers.get(user) {
            Some((salt, salted)) => ScramSecret::verifier_from_salted_password(
                salt.clone(),
                salted.clone(),
                SCRAM_ITERATIONS,
            ),
            // An unknown user gets a verifier no proof matches, so the exchange
            // runs to its end and fails the same way a wrong password does.
            None => ScramSecret::Verifier {
                salt: random_bytes(16),
                iterations: SCRAM_ITERATIONS,
                stored_key: random_bytes(32),
                server_key: random_bytes(32),
            },
        };
        Ok((secret, None))
    }
}

/// The TLS acceptor for SSLRequest, from PEM files.
pub fn tls_acceptor(tls: &TlsConfig) -> Result<TlsAcceptor> {
    let bad = |what: &str, e: &dyn std::fmt::Display| QueryError::Internal {
        message: format!("TLS {what}: {e}"),
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| bad(&format!("certificate {}", tls.cert.display()), &e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(&format!("certificate {}", tls.cert.display()), &e))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| bad(&format!("key {}", tls.key.display()), &e))?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("configuration", &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
