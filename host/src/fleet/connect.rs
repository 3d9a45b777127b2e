//! Reaching the fleet database: the URL (with its TLS wishes), shown without its password,
//! and a connection whose every step is bounded in time.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{describe, FleetError, CONNECT_TIMEOUT};

/// How the station talks to the database, from the URL's `sslmode` (libpq's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No `sslmode`, or `disable`: plain TCP or a unix socket (a local or trusted link).
    Plain,
    /// `require`, `verify-ca`, `verify-full`: TLS with rustls, and the server's certificate
    /// always checked against `sslrootcert` (or the system's roots) and the host name.
    /// Stricter than libpq's `require`, which checks nothing: the URL carries a password.
    Verified,
}

/// A database to connect to. `Debug` and [`Target::shown`] never show the password.
#[derive(Clone)]
pub struct Target {
    config: Config,
    tls: TlsMode,
    root_cert: Option<PathBuf>,
    shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.shown)
            .field("tls", &self.tls)
            .finish()
    }
}

fn bad(reason: impl Into<String>) -> FleetError {
    FleetError::Url {
        reason: reason.into(),
    }
}

impl Target {
    /// `postgresql://user:password@host:port/database?sslmode=…&sslrootcert=…`; a unix
    /// socket as `postgresql://user@%2Frun%2Fpostgresql/database` or `?host=/run/postgresql`.
    pub fn parse(text: &str) -> Result<Target, FleetError> {
        let url = url::Url::parse(text.trim()).map_err(|e| {
            bad(format!(
                "{e} (expected postgresql://user:password@host/database)"
            ))
        })?;
        if !matches!(url.scheme(), "postgresql" | "postgres") {
            return Err(bad(format!(
                "the scheme is {:?}; expected postgresql://",
                url.scheme()
            )));
        }
        let mut tls = TlsMode::Plain;
        let mut root_cert = None;
        let mut kept = url.clone();
        kept.set_query(None);
        {
            let mut query = kept.query_pairs_mut();
            for (key, value) in url.query_pairs() {
                match key.as_ref() {
                    "sslmode" => {
                        tls = match value.as_ref() {
                            "disable" => TlsMode::Plain,
                            "require" | "verify-ca" | "verify-full" => TlsMode::Verified,
                            other => {
                                return Err(bad(format!(
                                    "sslmode={other} is not supported: use disable, require, verify-ca or verify-full"
                                )))
                            }
                        }
                    }
                    "sslrootcert" => root_cert = Some(PathBuf::from(value.as_ref())),
                    _ => {
                        query.append_pair(&key, &value);
                    }
                }
            }
            query.append_pair(
                "sslmode",
                if tls == TlsMode::Plain {
                    "disable"
                } else {
                    "require"
                },
            );
        }
        let mut config = Config::from_str(kept.as_str()).map_err(|e| bad(describe(&e)))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("station");
        Ok(Target {
            config,
            tls,
            root_cert,
            shown: redact(&url),
        })
    }

    /// The URL for messages: the password (and `password=`) replaced by `***`.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub fn tls(&self) -> TlsMode {
        self.tls
    }
}

fn redact(url: &url::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" { "***".into() } else { v };
                (k.into_owned(), v.into_owned())
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

/// The rustls client for `Verified`: `sslrootcert`'s CAs, else the system's trust store.
fn tls_config(root_cert: Option<&Path>) -> Result<rustls::ClientConfig, FleetError> {
    let tls = |reason: String| FleetError::Tls { reason };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?;
    let config = match root_cert {
        Some(path) => {
            let text = std::fs::read(path)
                .map_err(|e| tls(format!("sslrootcert {}: {e}", path.display())))?;
            let blocks = pem::parse_many(&text)
                .map_err(|e| tls(format!("sslrootcert {}: {e}", path.display())))?;
            let mut roots = rustls::RootCertStore::empty();
            for block in blocks.iter().filter(|b| b.tag() == "CERTIFICATE") {
                roots
                    .add(rustls::pki_types::CertificateDer::from(
                        block.contents().to_vec(),
                    ))
                    .map_err(|e| tls(format!("sslrootcert {}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(tls(format!(
                    "sslrootcert {} holds no certificate",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder
                .with_platform_verifier()
                .map_err(|e| tls(e.to_string()))?
                .with_no_client_auth()
        }
    };
    Ok(config)
}

/// Connects (bounded by [`CONNECT_TIMEOUT`]); the connection's I/O runs in its own task,
/// which ends when the client is dropped or the link breaks.
pub async fn connect(target: &Target) -> Result<Client, FleetError> {
    match target.tls {
        TlsMode::Plain => connect_with(target, NoTls).await,
        TlsMode::Verified => {
            let tls = MakeRustlsConnect::new(tls_config(target.root_cert.as_deref())?);
            connect_with(target, tls).await
        }
    }
}

/// [`connect`] over the link `tls` makes (plain or rustls).
async fn connect_with<T>(target: &Target, tls: T) -> Result<Client, FleetError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, target.config.connect(tls))
        .await
        .map_err(|_| FleetError::Timeout {
            what: "connecting",
            timeout: CONNECT_TIMEOUT,
        })?
        .map_err(|e| FleetError::Connect {
            target: target.shown.clone(),
            reason: describe(&e),
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("fleet database connection closed: {}", describe(&e));
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_shown() {
        let target =
            Target::parse("postgresql://station:s3cr%2Ft@db.floor:5432/fleet?sslmode=verify-full")
                .expect("parse");
        assert_eq!(target.tls(), TlsMode::Verified);
        assert_eq!(
            target.shown(),
            "postgresql://station:***@db.floor:5432/fleet?sslmode=verify-full"
        );
        assert!(!format!("{target:?}").contains("s3cr"));
        let target =
            Target::parse("postgres://db/fleet?user=station&password=s3cret").expect("parse");
        assert!(!target.shown().contains("s3cret"), "{}", target.shown());
        assert_eq!(target.tls(), TlsMode::Plain);
    }

    #[test]
    fn sslmodes_and_unix_sockets() {
        for mode in ["require", "verify-ca", "verify-full"] {
            let url = format!("postgresql://u@h/db?sslmode={mode}");
            assert_eq!(Target::parse(&url).expect("parse").tls(), TlsMode::Verified);
        }
        let plain = Target::parse("postgresql://u@h/db?sslmode=disable").expect("parse");
        assert_eq!(plain.tls(), TlsMode::Plain);
        let error = Target::parse("postgresql://u:pw@h/db?sslmode=prefer").expect_err("prefer");
        assert!(error.to_string().contains("sslmode=prefer"), "{error}");
        assert!(!error.to_string().contains("pw"));
        let socket = Target::parse("postgresql://station@%2Ftmp%2Fpg/fleet").expect("socket");
        assert_eq!(socket.tls(), TlsMode::Plain);
        let error = Target::parse("mysql://u:hunter2@h/db").expect_err("scheme");
        assert!(!error.to_string().contains("hunter2"), "{error}");
        let error = Target::parse("not a url hunter2").expect_err("text");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn a_root_certificate_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "nothing here").expect("write");
        assert!(matches!(
            tls_config(Some(&path)),
            Err(FleetError::Tls { .. })
        ));
        let cert = rcgen::generate_simple_self_signed(vec!["db.floor".into()]).expect("cert");
        std::fs::write(&path, cert.cert.pem()).expect("write");
        assert!(tls_config(Some(&path)).is_ok());
    }
}
