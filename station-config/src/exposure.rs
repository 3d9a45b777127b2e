//! Where the configuration could send a secret or a phone's identity out of the machine:
//! URL keys that speak plain HTTP across a network, and hook environments that would carry
//! another source's secret.

use std::collections::BTreeMap;
use std::net::IpAddr;

use url::{Host, Url};

/// What a URL key is used for, said in the error so that the operator knows what is at
/// stake.
pub(crate) struct UrlKey<'a> {
    /// Dotted key at fault (`activation.url`, `codes.sources[1].token_url`).
    pub key: String,
    pub url: &'a str,
    /// What would cross the network in clear (`the phone's activation info`).
    pub carries: &'static str,
    /// Where `allow_insecure_http = true` would go (`[activation]`, `this [[codes.sources]] entry`).
    pub section: &'static str,
    pub allow_insecure_http: bool,
}

/// A plain-HTTP URL the section allowed: the warning logged at start.
pub(crate) type Allowed = Option<String>;

/// `Err`: why the URL is refused. An https URL, or http to this machine (the virtual bench),
/// passes; http to any other host passes only with `allow_insecure_http`, with a warning.
/// The URL is read as the HTTP client reads it (the `url` crate), so a userinfo or
/// backslash trick cannot make a remote host look local.
pub(crate) fn check_url(at: &UrlKey<'_>) -> Result<Allowed, String> {
    let key = &at.key;
    let not_http = || format!("{key} must be an http(s) URL");
    let url = Url::parse(at.url).map_err(|_| not_http())?;
    match url.scheme() {
        "https" => return Ok(None),
        "http" => {}
        _ => return Err(not_http()),
    }
    let host = url.host().ok_or_else(not_http)?;
    if is_loopback(&host) {
        return Ok(None);
    }
    if at.allow_insecure_http {
        return Ok(Some(format!(
            "{key} is plain http:// to {host}: {} cross the network in clear (allowed by allow_insecure_http = true)",
            at.carries
        )));
    }
    Err(format!(
        "{key} is plain http:// to {host}, which is not this machine: {} would cross the network in clear; use https://, or set allow_insecure_http = true in {} if that network is trusted",
        at.carries, at.section
    ))
}

/// This machine: `localhost`, 127.0.0.0/8, `::1` (and `::ffff:127.x.y.z`).
fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(name) => {
            let name = name.trim_end_matches('.');
            name.eq_ignore_ascii_case("localhost")
        }
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => {
            IpAddr::V6(*ip).is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Whether `name` is an environment variable name a hook can be given
/// (letters, digits and `_`, not starting with a digit).
pub(crate) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Which secret an environment variable holds: `client_secret of code source `intune``.
pub(crate) type SecretOwners = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, allow: bool) -> Result<Allowed, String> {
        check_url(&UrlKey {
            key: "activation.url".into(),
            url,
            carries: "the phone's activation info",
            section: "[activation]",
            allow_insecure_http: allow,
        })
    }

    #[test]
    fn plain_http_only_to_this_machine() {
        for local in [
            "http://127.0.0.1:8080/",
            "http://127.8.9.10",
            "http://localhost:1234/x",
            "http://LOCALHOST./",
            "http://[::1]:80/",
            "http://[::ffff:127.0.0.1]/",
            "https://albert.apple.com",
            "https://10.0.0.1/",
        ] {
            assert_eq!(check(local, false), Ok(None), "{local}");
        }
        for remote in [
            "http://albert.apple.com",
            "http://10.0.0.1:8080/",
            "http://[fe80::1]/",
            "http://localhost.evil.example/",
            "http://127.0.0.1.evil.example/",
            // The client reads these as the remote host, so must the check.
            "http://127.0.0.1@evil.example/",
            "http://evil.example\\@127.0.0.1/",
        ] {
            let err = check(remote, false).expect_err(remote);
            assert!(
                err.starts_with("activation.url is plain http:// to "),
                "{err}"
            );
            assert!(
                err.contains("allow_insecure_http = true in [activation]"),
                "{err}"
            );
            let warning = check(remote, true).expect(remote).expect("a warning");
            assert!(
                warning.contains("allowed by allow_insecure_http"),
                "{warning}"
            );
        }
        for junk in ["ftp://a/", "albert.apple.com", "http://", ""] {
            assert_eq!(
                check(junk, true),
                Err("activation.url must be an http(s) URL".into()),
                "{junk}"
            );
        }
    }

    #[test]
    fn environment_names() {
        assert!(is_env_name("JAMF_URL") && is_env_name("_x1"));
        assert!(
            !is_env_name("") && !is_env_name("1A") && !is_env_name("A=B") && !is_env_name("A B")
        );
    }
}
