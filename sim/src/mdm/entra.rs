//! The stand-in Microsoft Entra token endpoint: `POST /{tenant}/oauth2/v2.0/token`, the
//! OAuth2 client-credentials grant with a client secret or a certificate-signed client
//! assertion (docs/mdm.md §1.5). Errors have Entra's shape (`error`, `error_description` starting
//! with an `AADSTS` code, `error_codes`, …); the codes are Entra's where known.

use std::time::SystemTime;

use base64::Engine as _;
use serde_json::{json, Value};

use super::intune::{AssertionKey, IntuneInner};
use super::service::{outcome_for, unix_now, utc_timestamp, Answer, MdmOutcome, Req};

const JSON: &str = "application/json; charset=utf-8";
const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Clock skew allowed for an assertion's `nbf`.
const NBF_SKEW_SECS: u64 = 300;

/// An Entra error answer. `description` must never hold a secret.
fn aadsts(status: u16, error: &str, code: u32, description: &str) -> Answer {
    let trace = uuid::Uuid::new_v4().hyphenated().to_string();
    let correlation = uuid::Uuid::new_v4().hyphenated().to_string();
    let now = utc_timestamp(unix_now());
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {description} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {now}"
        ),
        "error_codes": [code],
        "timestamp": now.replace('T', " "),
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    let reason = format!("{error} (AADSTS{code})");
    let outcome = match status {
        401 => MdmOutcome::Unauthorized { reason },
        _ => outcome_for(status, &reason),
    };
    Answer::json(status, JSON, &body, outcome)
}

/// Throttling and injected failures on the token endpoint.
pub(crate) fn error_answer(status: u16, message: &str) -> Answer {
    let error = if status == 429 {
        "temporarily_unavailable"
    } else {
        "server_error"
    };
    aadsts(status, error, 90033, message)
}

pub(crate) fn route(inner: &IntuneInner, req: &Req) -> Answer {
    let fields: Vec<(String, String)> = form_urlencoded::parse(req.body).into_owned().collect();
    let mut answer = token(inner, req, &fields);
    answer.fields = fields.into_iter().map(|(name, _)| name).collect();
    answer
}

fn token(inner: &IntuneInner, req: &Req, form: &[(String, String)]) -> Answer {
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let [tenant, "oauth2", "v2.0", "token"] = segments.as_slice() else {
        return aadsts(
            404,
            "invalid_request",
            90002,
            "Only /{tenant}/oauth2/v2.0/token is served here.",
        );
    };
    if req.method != "POST" {
        let mut a = aadsts(
            405,
            "invalid_request",
            900561,
            "The endpoint only accepts POST requests.",
        );
        a.headers.push(("Allow".to_string(), "POST".to_string()));
        return a;
    }
    if !tenant.eq_ignore_ascii_case(&inner.tenant) {
        return aadsts(
            400,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        );
    }
    let form_ct = req.content_type.is_some_and(|ct| {
        ct.trim()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    if !form_ct {
        return aadsts(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'. (Content-Type must be application/x-www-form-urlencoded.)",
        );
    }
    let field = |name: &str| {
        form.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let missing = |name: &str| {
        aadsts(
            400,
            "invalid_request",
            900144,
            &format!("The request body must contain the following parameter: '{name}'."),
        )
    };
    let Some(grant) = field("grant_type") else {
        return missing("grant_type");
    };
    if grant != "client_credentials" {
        return aadsts(
            400,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type: the stand-in serves client_credentials only.",
        );
    }
    let Some(client_id) = field("client_id") else {
        return missing("client_id");
    };
    if !client_id.eq_ignore_ascii_case(&inner.client_id) {
        return aadsts(
            400,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant."),
        );
    }
    let Some(scope) = field("scope") else {
        return missing("scope");
    };
    if scope != inner.scope {
        return aadsts(
            400,
            "invalid_scope",
            1002012,
            &format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI); this tenant's Graph is {}.", inner.scope),
        );
    }
    let secret = field("client_secret");
    let assertion = field("client_assertion");
    match (secret, assertion) {
        (Some(_), Some(_)) => {
            return aadsts(
                400,
                "invalid_request",
                50027,
                "Send either client_secret or client_assertion, not both.",
            )
        }
        (None, None) => {
            return aadsts(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        }
        (Some(secret), None) => {
            let expected = inner.settings().client_secret.clone();
            if !crate::activation::same(secret.as_bytes(), expected.as_bytes()) {
                return aadsts(
                    401,
                    "invalid_client",
                    7000215,
                    &format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.", inner.client_id),
                );
            }
        }
        (None, Some(assertion)) => {
            if field("client_assertion_type") != Some(JWT_BEARER) {
                return aadsts(
                    400,
                    "invalid_request",
                    700025,
                    &format!("client_assertion_type must be {JWT_BEARER}."),
                );
            }
            let (keys, strict) = {
                let settings = inner.settings();
                (settings.keys.clone(), settings.strict_assertions)
            };
            // The audience is the URL the assertion was posted to.
            let audience = format!("{}{}", inner.token_base, req.path);
            if let Err((status, code, why)) =
                verify_assertion(assertion, &keys, &inner.client_id, &audience, SystemTime::now(), strict)
            {
                return aadsts(status, "invalid_client", code, &why);
            }
        }
    }
    let (access_token, expires_in) = inner.issue_token();
    let body = json!({
        "token_type": "Bearer",
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": access_token,
    });
    Answer::json(200, JSON, &body, MdmOutcome::Ok)
        .with_header("Cache-Control", "no-store, no-cache")
        .with_header("Pragma", "no-cache")
}

/// Checks a client assertion (RFC 7523 as Entra uses it): an RS256 or PS256 JWT signed by
/// one of `keys` (the one `x5t`/`x5t#S256` names, if it names one), `aud` = the token URL,
/// `iss` = `sub` = the client id, `exp` in the future, `nbf` not in the future. `strict`
/// accepts only PS256 and no SHA-1 `x5t`, as Entra's current documentation prescribes.
/// Errors are (status, AADSTS code, description).
pub(crate) fn verify_assertion(
    jwt: &str,
    keys: &[AssertionKey],
    client_id: &str,
    audience: &str,
    now: SystemTime,
    strict: bool,
) -> Result<(), (u16, u32, String)> {
    let malformed = |why: &str| {
        (
            401u16,
            50027u32,
            format!("JWT token is invalid or malformed: {why}."),
        )
    };
    let mut parts = jwt.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not three dot-separated parts"));
    };
    let decode = |part: &str| B64URL.decode(part).map_err(|_| malformed("not base64url"));
    let header: Value =
        serde_json::from_slice(&decode(h)?).map_err(|_| malformed("header is not JSON"))?;
    let claims: Value =
        serde_json::from_slice(&decode(p)?).map_err(|_| malformed("payload is not JSON"))?;
    let signature = decode(s)?;

    let alg = header.get("alg").and_then(Value::as_str);
    if strict && (alg != Some("PS256") || header.get("x5t").is_some()) {
        return Err((
            401,
            5002738,
            "The client assertion must be signed with PS256 and name its certificate by x5t#S256; RS256 and SHA-1 x5t are not accepted for this application.".to_string(),
        ));
    }
    let algorithm: &'static dyn aws_lc_rs::signature::VerificationAlgorithm = match alg {
        Some("RS256") => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        Some("PS256") => &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
        _ => {
            return Err((
                401,
                5002738,
                "The client assertion must be signed with RS256 or PS256.".to_string(),
            ))
        }
    };
    let thumb = |name: &str| {
        header
            .get(name)
            .and_then(Value::as_str)
            .and_then(|t| B64URL.decode(t).ok())
    };
    let (x5t, x5t256) = (thumb("x5t"), thumb("x5t#S256"));
    // A certificate named by thumbprint, or any bare public key.
    let candidates: Vec<&AssertionKey> = keys
        .iter()
        .filter(|k| match (&k.sha1, &k.sha256) {
            (None, None) => true,
            (sha1, sha256) => {
                (x5t.is_none() && x5t256.is_none())
                    || (x5t.is_some() && x5t == *sha1)
                    || (x5t256.is_some() && x5t256 == *sha256)
            }
        })
        .collect();
    if candidates.is_empty() {
        return Err((
            401,
            700027,
            format!("The certificate with identifier used to sign the client assertion is not registered on application {client_id}."),
        ));
    }
    let signed = format!("{h}.{p}");
    let verified = candidates.iter().any(|k| {
        aws_lc_rs::signature::UnparsedPublicKey::new(algorithm, &k.rsa_public_key)
            .verify(signed.as_bytes(), &signature)
            .is_ok()
    });
    if !verified {
        return Err((
            401,
            700027,
            "Client assertion failed signature validation.".to_string(),
        ));
    }

    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if !aud_ok {
        return Err((
            401,
            700212,
            format!("The client assertion's audience claim does not match the token endpoint: expected {audience}."),
        ));
    }
    if text("iss") != Some(client_id) || text("sub") != Some(client_id) {
        return Err((
            401,
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter: iss and sub must be the client id.".to_string(),
        ));
    }
    let unix = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let number = |name: &str| claims.get(name).and_then(Value::as_u64);
    let Some(exp) = number("exp") else {
        return Err(malformed("no numeric exp claim"));
    };
    if exp <= unix || number("nbf").is_some_and(|nbf| nbf > unix + NBF_SKEW_SECS) {
        return Err((
            401,
            700024,
            "Client assertion is not within its valid time range.".to_string(),
        ));
    }
    Ok(())
}
