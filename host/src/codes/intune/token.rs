//! The app-only token: a client secret or a certificate assertion (PS256 with `x5t#S256` by
//! default, RS256 with a SHA-1 `x5t` as a fallback; docs/mdm.md §1.5) sent to Entra ID's
//! token endpoint, kept until shortly before it expires and shared by the
//! source's concurrent look-ups.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{RsaEncoding, RsaKeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use station_config::{AssertionAlg, SecretString};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::graph::parse_json;
use super::{Intune, IntuneError};
use crate::codes::answer::service_error;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// A token is renewed this long before it expires (or at half its life, if shorter).
const TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// Lifetime of a certificate assertion.
const ASSERTION_LIFETIME_SECS: u64 = 600;

/// How the app proves who it is.
#[derive(Debug)]
pub enum Credential {
    Secret(SecretString),
    Certificate(Certificate),
}

/// A certificate credential: the key signs the client assertion, PS256 named by the
/// certificate's SHA-256 thumbprint (`x5t#S256`) unless RS256 with its SHA-1 one (`x5t`)
/// was chosen.
pub struct Certificate {
    x5t: String,
    x5t_s256: String,
    algorithm: AssertionAlg,
    key: RsaKeyPair,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Certificate {{ x5t#S256: {}, algorithm: {:?}, key: <redacted> }}",
            self.x5t_s256, self.algorithm
        )
    }
}

impl Certificate {
    /// `cert_pem` holds a `CERTIFICATE`, `key_pem` an RSA key (`PRIVATE KEY` or
    /// `RSA PRIVATE KEY`).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IntuneError> {
        let bad = |reason: &str| IntuneError::Credential {
            reason: reason.to_string(),
        };
        let blocks = pem::parse_many(cert_pem).map_err(|_| bad("certificate file is not PEM"))?;
        let cert = blocks
            .iter()
            .find(|b| b.tag() == "CERTIFICATE")
            .ok_or_else(|| bad("certificate file holds no CERTIFICATE block"))?;
        let sha1 = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            cert.contents(),
        );
        let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.contents());
        // Parse errors of the key file say nothing of its contents.
        let blocks = pem::parse_many(key_pem).map_err(|_| bad("key file is not PEM"))?;
        let key = blocks
            .iter()
            .find_map(|b| match b.tag() {
                "PRIVATE KEY" => Some(RsaKeyPair::from_pkcs8(b.contents())),
                "RSA PRIVATE KEY" => Some(RsaKeyPair::from_der(b.contents())),
                _ => None,
            })
            .ok_or_else(|| bad("key file holds no PRIVATE KEY or RSA PRIVATE KEY block"))?
            .map_err(|_| bad("key file does not hold a usable RSA key (2048 bits or more)"))?;
        Ok(Certificate {
            x5t: URL_SAFE_NO_PAD.encode(sha1.as_ref()),
            x5t_s256: URL_SAFE_NO_PAD.encode(sha256.as_ref()),
            algorithm: AssertionAlg::default(),
            key,
        })
    }

    /// Signs with `algorithm` instead of the default PS256.
    pub fn with_algorithm(mut self, algorithm: AssertionAlg) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// The `x5t` header value: base64url of the certificate's SHA-1 thumbprint.
    #[cfg(test)]
    pub(super) fn x5t(&self) -> &str {
        &self.x5t
    }

    /// The `x5t#S256` header value: base64url of the certificate's SHA-256 thumbprint.
    #[cfg(test)]
    pub(super) fn x5t_s256(&self) -> &str {
        &self.x5t_s256
    }

    /// The DER `RSAPublicKey` of the key, for tests that check the signature.
    #[cfg(test)]
    pub(super) fn public_key(&self) -> Vec<u8> {
        use aws_lc_rs::signature::KeyPair as _;
        self.key.public_key().as_ref().to_vec()
    }

    /// A PS256 (or RS256) JWT: `aud` the token URL, `iss` = `sub` = the client id, a random `jti`.
    pub(super) fn assertion(
        &self,
        client_id: &str,
        audience: &str,
    ) -> Result<SecretString, IntuneError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| IntuneError::Credential {
            reason: "no randomness for the assertion id".into(),
        })?;
        let (header, encoding): (_, &'static dyn RsaEncoding) = match self.algorithm {
            AssertionAlg::Ps256 => (
                serde_json::json!({ "alg": "PS256", "typ": "JWT", "x5t#S256": self.x5t_s256 }),
                &RSA_PSS_SHA256,
            ),
            AssertionAlg::Rs256 => (
                serde_json::json!({ "alg": "RS256", "typ": "JWT", "x5t": self.x5t }),
                &RSA_PKCS1_SHA256,
            ),
        };
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "iat": now,
            "nbf": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                encoding,
                &aws_lc_rs::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| IntuneError::Credential {
                reason: "cannot sign the client assertion".into(),
            })?;
        Ok(SecretString::new(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }
}

pub(super) struct Token {
    value: SecretString,
    renew_at: Instant,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

impl Intune {
    pub(super) async fn token(&self) -> Result<SecretString, IntuneError> {
        let mut slot = self.token.lock().await;
        if let Some(token) = slot.as_ref().filter(|t| t.renew_at > Instant::now()) {
            return Ok(token.value.clone());
        }
        let token = self.fetch_token().await?;
        let value = token.value.clone();
        *slot = Some(token);
        Ok(value)
    }

    pub(super) async fn forget_token(&self, stale: &SecretString) {
        let mut slot = self.token.lock().await;
        if slot.as_ref().is_some_and(|t| &t.value == stale) {
            *slot = None;
        }
    }

    async fn fetch_token(&self) -> Result<Token, IntuneError> {
        let s = &self.settings;
        // The serializer is not Send: finish it before awaiting.
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("client_id", &s.client_id)
                .append_pair("scope", &s.scope)
                .append_pair("grant_type", "client_credentials");
            match &s.credential {
                Credential::Secret(secret) => {
                    form.append_pair("client_secret", secret.expose());
                }
                Credential::Certificate(cert) => {
                    let assertion = cert.assertion(&s.client_id, &s.token_url)?;
                    form.append_pair("client_assertion_type", JWT_BEARER)
                        .append_pair("client_assertion", assertion.expose());
                }
            }
            Zeroizing::new(form.finish())
        };
        let headers = [(
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        )];
        let requested = Instant::now();
        let response = self
            .http
            .post(&s.token_url, &headers, body.as_bytes())
            .await?;
        if response.status != 200 {
            let (code, message) = service_error(&response.body).unwrap_or_default();
            let hint = match code.as_str() {
                "invalid_client" => "check client_id and the client secret or certificate (expired? uploaded to the app registration?)",
                "unauthorized_client" => "the app registration is not enabled for this tenant",
                "invalid_request" | "invalid_tenant" => "check the tenant (GUID or verified domain) and the cloud",
                _ if response.status == 429 => "Entra ID is throttling; retry later",
                _ => "check the tenant, client_id and credential",
            };
            return Err(IntuneError::TokenRefused {
                status: response.status,
                code,
                message,
                hint,
            });
        }
        let answer: TokenAnswer = parse_json(&response.body, "Entra ID's token answer")?;
        let lifetime = match answer.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            // Entra ID v1 endpoints send it as a string.
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .map_or(Duration::from_secs(3599), Duration::from_secs);
        if answer.access_token.is_empty() {
            return Err(IntuneError::BadAnswer {
                what: "Entra ID's token answer",
                reason: "empty access_token".into(),
            });
        }
        tracing::debug!(source = %s.name, lifetime_secs = lifetime.as_secs(), "Graph token obtained");
        Ok(Token {
            value: SecretString::new(answer.access_token),
            renew_at: requested + lifetime.saturating_sub(TOKEN_MARGIN.min(lifetime / 2)),
        })
    }
}
