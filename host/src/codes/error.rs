//! Why a code source could not answer: each source's own typed error, kept whole, with the
//! few questions the workflow asks of any of them (`kind`, `code`, `is_retryable`) answered
//! in one place. Display is the source's own message, which reaches reports and the ledger.

use std::time::Duration;

use super::chain::ChainError;
use super::hook::HookError;
use super::intune::IntuneError;
use super::kandji::KandjiError;
use crate::http::HttpError;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Intune(#[from] IntuneError),
    #[error(transparent)]
    Kandji(#[from] KandjiError),
    #[error(transparent)]
    Hook(#[from] HookError),
    /// The configured chain as a whole (no source, every source failed).
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// `station activate` without `--codes` and without `[[codes.sources]]`.
    #[error("no bypass-code source is configured (pass --codes FILE.csv, or add [[codes.sources]] to the configuration)")]
    NotConfigured,
}

/// What went wrong, whichever source it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No answer: connection refused, DNS, TLS, time-out.
    Unreachable,
    /// The service answered an HTTP status it should not have.
    HttpStatus(u16),
    /// HTTP 429, with the service's `Retry-After` when it gave one.
    Throttled { retry_after: Option<Duration> },
    /// The credential was refused or cannot be used.
    Unauthorised,
    /// The credential works but lacks a permission.
    Forbidden,
    /// An answer that cannot be read (JSON, pages, links, size).
    BadAnswer,
    /// The hook program could not run, timed out or exited non-zero.
    HookFailed,
    /// No source is configured.
    NotConfigured,
    /// Every source of the chain failed (each failure is in the chain's report).
    AllFailed,
    /// A source could not be built from the configuration.
    Misconfigured,
}

impl LookupError {
    pub fn kind(&self) -> FailureKind {
        match self {
            LookupError::Intune(e) => match e {
                IntuneError::Credential { .. }
                | IntuneError::TokenRefused { .. }
                | IntuneError::TokenRejected { .. } => FailureKind::Unauthorised,
                IntuneError::Permission { .. } => FailureKind::Forbidden,
                IntuneError::Throttled { retry_after } => FailureKind::Throttled {
                    retry_after: *retry_after,
                },
                IntuneError::Service { status, .. } => FailureKind::HttpStatus(*status),
                IntuneError::BadAnswer { .. }
                | IntuneError::TooManyPages
                | IntuneError::ForeignLink { .. } => FailureKind::BadAnswer,
                IntuneError::Http(e) => http_kind(e),
            },
            LookupError::Kandji(e) => match e {
                KandjiError::Unauthorized => FailureKind::Unauthorised,
                KandjiError::Forbidden { .. } => FailureKind::Forbidden,
                KandjiError::Throttled => FailureKind::Throttled { retry_after: None },
                KandjiError::Service { status, .. } => FailureKind::HttpStatus(*status),
                KandjiError::BadAnswer { .. } | KandjiError::TooManyMatches { .. } => {
                    FailureKind::BadAnswer
                }
                KandjiError::Http(e) => http_kind(e),
            },
            LookupError::Hook(e) => match e {
                HookError::Spawn { .. } | HookError::TimedOut { .. } | HookError::Failed { .. } => {
                    FailureKind::HookFailed
                }
                HookError::TooMuchOutput
                | HookError::NotText
                | HookError::BadLine { .. }
                | HookError::BadJson { .. } => FailureKind::BadAnswer,
            },
            LookupError::Chain(e) => match e {
                ChainError::Build { .. } => FailureKind::Misconfigured,
                ChainError::NoSources => FailureKind::NotConfigured,
                ChainError::AllFailed { .. } | ChainError::ReleaseFailed { .. } => {
                    FailureKind::AllFailed
                }
            },
            LookupError::NotConfigured => FailureKind::NotConfigured,
        }
    }

    /// A stable name of the failure, for logs and machine readers.
    pub fn code(&self) -> &'static str {
        match self.kind() {
            FailureKind::Unreachable => "source-unreachable",
            FailureKind::HttpStatus(_) => "source-http-status",
            FailureKind::Throttled { .. } => "source-throttled",
            FailureKind::Unauthorised => "source-unauthorised",
            FailureKind::Forbidden => "source-forbidden",
            FailureKind::BadAnswer => "source-bad-answer",
            FailureKind::HookFailed => "hook-failed",
            FailureKind::NotConfigured => "codes-not-configured",
            FailureKind::AllFailed => "codes-all-failed",
            FailureKind::Misconfigured => "codes-source",
        }
    }

    /// Whether asking again later (a replug) may succeed without changing anything.
    pub fn is_retryable(&self) -> bool {
        match self.kind() {
            FailureKind::Unreachable | FailureKind::Throttled { .. } | FailureKind::HookFailed => {
                true
            }
            FailureKind::HttpStatus(status) => status >= 500,
            FailureKind::AllFailed => true,
            FailureKind::Unauthorised
            | FailureKind::Forbidden
            | FailureKind::BadAnswer
            | FailureKind::NotConfigured
            | FailureKind::Misconfigured => false,
        }
    }
}

fn http_kind(e: &HttpError) -> FailureKind {
    match e {
        HttpError::Transport { .. } => FailureKind::Unreachable,
        HttpError::TooLarge { .. } => FailureKind::BadAnswer,
        HttpError::BadUrl { .. } | HttpError::BadHeader { .. } => FailureKind::Misconfigured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_keeps_its_message_and_says_whether_to_retry() {
        let throttled = LookupError::from(IntuneError::Throttled {
            retry_after: Some(Duration::from_secs(7)),
        });
        assert_eq!(
            throttled.kind(),
            FailureKind::Throttled {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(throttled.code(), "source-throttled");
        assert!(throttled.is_retryable());
        assert_eq!(
            throttled.to_string(),
            "Graph is throttling this app (HTTP 429, Retry-After 7 s): retry later or lower max_requests_per_second"
        );

        let refused = LookupError::from(KandjiError::Unauthorized);
        assert_eq!(refused.code(), "source-unauthorised");
        assert!(!refused.is_retryable());

        let hook = LookupError::from(HookError::TimedOut {
            after: Duration::from_secs(10),
        });
        assert_eq!(hook.to_string(), "hook timed out after 10s");
        assert_eq!(hook.code(), "hook-failed");

        let unreachable = LookupError::from(KandjiError::Http(HttpError::Transport {
            service: "Kandji",
            url: "https://x.invalid".into(),
            reason: "connection refused".into(),
        }));
        assert_eq!(unreachable.kind(), FailureKind::Unreachable);
        assert!(unreachable.is_retryable());

        let server = LookupError::from(KandjiError::Service {
            status: 503,
            what: "devices",
            message: String::new(),
        });
        assert_eq!(server.kind(), FailureKind::HttpStatus(503));
        assert!(server.is_retryable());
        assert_eq!(LookupError::NotConfigured.code(), "codes-not-configured");
    }
}
