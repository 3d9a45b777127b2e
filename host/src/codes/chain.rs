//! The configured code sources, asked together (or, with `[codes] later_sources =
//! "when_no_code"`, one after the other until one gives codes) and merged in configuration
//! order: codes
//! without duplicates, each tagged with the name of the source that gave it first. A source
//! that fails is reported and the others still count; only when every source failed is the
//! lookup an error. Answers are kept for the length of a run (one chain per run), per source
//! and per serial + UDID, so a replugged phone costs no new API calls; a source that failed is
//! asked again next time, and an answer without a code only for a while
//! (`[codes] no_code_recheck_secs`): codes appear later (a reset phone re-enrolled, an admin
//! re-escrowing), and a long run must see them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{join_all, BoxFuture};
use station_config::{Environment, LaterSources, StationConfig};

use super::{CodeLookup, Lookup, LookupError, RemoteRelease, SourceAnswer, SourceFailure};
use crate::bounded::BoundedMap;
use crate::error::StationError;
use crate::http::RetryPolicy;

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("code source `{source_name}` ({kind}): {reason}")]
    Build {
        source_name: String,
        kind: &'static str,
        reason: String,
    },
    #[error("no bypass-code source is configured")]
    NoSources,
    #[error("every bypass-code source failed: {}", summarise(.failures))]
    AllFailed { failures: Vec<SourceFailure> },
    #[error("the Activation Lock release action failed: {}", summarise(.failures))]
    ReleaseFailed { failures: Vec<SourceFailure> },
}

impl ChainError {
    /// What the operator can do about it.
    pub fn help(&self) -> &'static str {
        match self {
            ChainError::Build { .. } => {
                "fix that source in the configuration ([[codes.sources]]), or check its secret"
            }
            _ => "check [[codes.sources]] in the configuration",
        }
    }
}

/// A chain that cannot be built stops a command before its first phone, as a usage error.
impl From<ChainError> for StationError {
    fn from(e: ChainError) -> Self {
        StationError::CodesSource(e)
    }
}

fn summarise(failures: &[SourceFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("{}: {}", f.source, f.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

struct Link {
    name: String,
    kind: &'static str,
    source: Box<dyn CodeLookup>,
}

/// (upper-case serial, normalised UDID)
type Key = (String, String);

fn cache_key(serial: &str, udid: &str) -> Key {
    (
        serial.trim().to_ascii_uppercase(),
        station_protocol::udid::normalise_udid(udid),
    )
}

/// How long an answer without a code is reused, unless configured.
pub const NO_CODE_RECHECK: Duration = Duration::from_secs(600);

/// Answers the cache keeps (one per source and phone); past it the oldest goes. The cache
/// spares a phone that is retried or replugged a second round trip; a phone long gone needs
/// none, and a service run sees thousands of phones (issue 13: without a bound the cache
/// grew by every phone of the run). 2048 answers are about 1,000 phones of two sources,
/// a few hundred kilobytes at most.
pub const CACHE_LIMIT: usize = 2048;

pub struct Chain {
    links: Vec<Link>,
    /// Answers per (link index, key), with when they were given; at most `CACHE_LIMIT` (or
    /// `with_cache_limit`), the oldest going first.
    cache: Mutex<BoundedMap<(usize, Key), (Lookup, Instant)>>,
    /// An answer without a code is asked again once it is this old.
    no_code_recheck: Duration,
    /// One lookup per key at a time, so a second one for the same phone waits and reads the
    /// cache instead of asking again.
    busy: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    /// Whether a source is asked when one before it gave codes.
    later_sources: LaterSources,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            links: Vec::new(),
            cache: Mutex::new(BoundedMap::new(CACHE_LIMIT)),
            no_code_recheck: NO_CODE_RECHECK,
            busy: Mutex::default(),
            later_sources: LaterSources::default(),
        }
    }
}

/// A phone's turn in `busy`: once the look-up is over (or dropped), the entry goes unless
/// another look-up of the same phone holds or waits for it, so `busy` holds only the phones
/// being looked up now.
struct BusyTurn<'a> {
    busy: &'a Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    key: Key,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for BusyTurn<'_> {
    fn drop(&mut self) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and this one: nobody else is in line.
        if Arc::strong_count(&self.lock) == 2 {
            busy.remove(&self.key);
        }
    }
}

impl Chain {
    pub fn new() -> Self {
        Chain::default()
    }

    /// Answers without a code are asked again once they are `after` old.
    pub fn with_no_code_recheck(mut self, after: Duration) -> Self {
        self.no_code_recheck = after;
        self
    }

    /// Keeps at most `limit` answers (at least one).
    pub fn with_cache_limit(self, limit: usize) -> Self {
        Chain {
            cache: Mutex::new(BoundedMap::new(limit)),
            ..self
        }
    }

    /// Answers cached now, and phones with a look-up under way (for the bounds' tests).
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner()).len();
        let busy = self.busy.lock().unwrap_or_else(|e| e.into_inner()).len();
        (cache, busy)
    }

    /// How later sources are asked (`[codes] later_sources`).
    pub fn with_later_sources(mut self, policy: LaterSources) -> Self {
        self.later_sources = policy;
        self
    }

    /// Appends a source; `kind` is its type (`csv`, `intune`, …).
    #[cfg(test)]
    pub fn with(
        mut self,
        name: impl Into<String>,
        kind: &'static str,
        source: impl CodeLookup + 'static,
    ) -> Self {
        self.links.push(Link {
            name: name.into(),
            kind,
            source: Box::new(source),
        });
        self
    }

    /// Builds every configured source: reads CSV files, loads secrets and keys. Any source
    /// that cannot be built stops here, before the first phone.
    pub fn from_config(config: &StationConfig) -> Result<Self, ChainError> {
        let retry = RetryPolicy::from_config(&config.retry);
        let env = Environment::process();
        let secret_env = config.secret_env_names().into_keys().collect();
        let mut chain = Chain::new()
            .with_no_code_recheck(Duration::from_secs(config.codes.no_code_recheck_secs))
            .with_later_sources(config.codes.later_sources);
        for source in &config.codes.sources {
            let built =
                super::registry::build(source, retry, &env, &secret_env).map_err(|reason| {
                    ChainError::Build {
                        source_name: source.name().to_string(),
                        kind: source.kind(),
                        reason,
                    }
                })?;
            chain.links.push(Link {
                name: source.name().to_string(),
                kind: source.kind(),
                source: built,
            });
        }
        Ok(chain)
    }

    /// The configured chain; `Ok(None)` when no source is configured.
    pub fn configured(config: &StationConfig) -> Result<Option<Self>, ChainError> {
        if config.codes.sources.is_empty() {
            return Ok(None);
        }
        Chain::from_config(config).map(Some)
    }

    /// The sources' names and types, in order.
    pub fn sources(&self) -> Vec<(&str, &'static str)> {
        self.links
            .iter()
            .map(|l| (l.name.as_str(), l.kind))
            .collect()
    }

    /// Asks every source (or its cached answer) and merges the answers in order.
    pub async fn lookup_all(&self, serial: &str, udid: &str) -> Result<Lookup, ChainError> {
        if self.links.is_empty() {
            return Err(ChainError::NoSources);
        }
        let key = cache_key(serial, udid);
        let turn = {
            let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
            BusyTurn {
                busy: &self.busy,
                key: key.clone(),
                lock: busy.entry(key.clone()).or_default().clone(),
            }
        };
        // Released before `turn` is dropped (reverse order of declaration).
        let _one_at_a_time = turn.lock.lock().await;
        let answers: Vec<Option<_>> = match self.later_sources {
            LaterSources::Always => join_all(
                self.links
                    .iter()
                    .enumerate()
                    .map(|(index, link)| self.ask(index, link, &key, serial, udid)),
            )
            .await
            .into_iter()
            .map(Some)
            .collect(),
            LaterSources::WhenNoCode => {
                let mut answers = Vec::with_capacity(self.links.len());
                let mut have_codes = false;
                for (index, link) in self.links.iter().enumerate() {
                    if have_codes {
                        tracing::debug!(source = %link.name, "not asked: an earlier source gave codes ([codes] later_sources = \"when_no_code\")");
                        answers.push(None);
                        continue;
                    }
                    let answer = self.ask(index, link, &key, serial, udid).await;
                    have_codes = answer.0.as_ref().is_ok_and(|(l, _)| !l.codes.is_empty());
                    answers.push(Some(answer));
                }
                answers
            }
        };
        let mut merged = Lookup::default();
        for (link, answer) in self.links.iter().zip(answers) {
            let Some((answer, elapsed)) = answer else {
                continue;
            };
            let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
            match answer {
                Ok((lookup, cached)) => {
                    merged.known |= lookup.known;
                    merged.answered.push(SourceAnswer {
                        source: link.name.clone(),
                        kind: link.kind,
                        known: lookup.known,
                        codes: lookup.codes.len(),
                        cached,
                        elapsed_ms,
                        absent: lookup.absent.first().cloned(),
                    });
                    merged.absent.extend(lookup.absent);
                    for mut code in lookup.codes {
                        code.source = link.name.clone();
                        merged.push(code);
                    }
                }
                Err(error) => {
                    tracing::warn!(source = %link.name, kind = link.kind, code = error.code(), retryable = error.is_retryable(), reason = %error, "bypass-code source failed");
                    merged.failures.push(SourceFailure {
                        source: link.name.clone(),
                        kind: link.kind,
                        reason: error.to_string(),
                        elapsed_ms,
                    });
                }
            }
        }
        if merged.answered.is_empty() {
            return Err(ChainError::AllFailed {
                failures: merged.failures,
            });
        }
        tracing::info!(
            serial = %key.0,
            known = merged.known,
            codes = merged.codes.len(),
            answered = merged.answered.len(),
            failed = merged.failures.len(),
            "bypass codes looked up"
        );
        Ok(merged)
    }

    /// One source's answer (from the cache, or asked and then cached) and the time it took.
    async fn ask(
        &self,
        index: usize,
        link: &Link,
        key: &Key,
        serial: &str,
        udid: &str,
    ) -> (Result<(Lookup, bool), LookupError>, Duration) {
        let started = Instant::now();
        let answer = self.ask_untimed(index, link, key, serial, udid).await;
        (answer, started.elapsed())
    }

    async fn ask_untimed(
        &self,
        index: usize,
        link: &Link,
        key: &Key,
        serial: &str,
        udid: &str,
    ) -> Result<(Lookup, bool), LookupError> {
        let slot = (index, key.clone());
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&slot)
            .cloned();
        // "No code" is not final: it is asked again once it has aged.
        let fresh = |(lookup, at): &(Lookup, Instant)| {
            !lookup.codes.is_empty() || at.elapsed() < self.no_code_recheck
        };
        if let Some((lookup, _)) = cached.filter(fresh) {
            tracing::debug!(source = %link.name, "bypass codes from this run's cache");
            return Ok((lookup, true));
        }
        let lookup = link.source.lookup(serial, udid).await?;
        // Asked again (a failure, or "no code" aged): the answer is the newest again.
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot, (lookup.clone(), Instant::now()));
        Ok((lookup, false))
    }

    /// The first source able to release the lock itself does so; `Ok(None)` when none is
    /// configured to, or none knows the phone.
    pub async fn release_lock(
        &self,
        serial: &str,
        udid: &str,
    ) -> Result<Option<RemoteRelease>, ChainError> {
        let mut failures = Vec::new();
        for link in &self.links {
            let started = Instant::now();
            match link.source.release(serial, udid).await {
                Ok(Some(release)) => return Ok(Some(release)),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(source = %link.name, code = error.code(), reason = %error, "Activation Lock release action failed");
                    failures.push(SourceFailure {
                        source: link.name.clone(),
                        kind: link.kind,
                        reason: error.to_string(),
                        elapsed_ms: u64::try_from(started.elapsed().as_millis())
                            .unwrap_or(u64::MAX),
                    });
                }
            }
        }
        if failures.is_empty() {
            Ok(None)
        } else {
            Err(ChainError::ReleaseFailed { failures })
        }
    }
}

impl CodeLookup for Chain {
    fn forget(&self, serial: &str, udid: &str) {
        let key = cache_key(serial, udid);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(_, cached), _| *cached != key);
    }

    fn lookup<'a>(
        &'a self,
        serial: &'a str,
        udid: &'a str,
    ) -> BoxFuture<'a, Result<Lookup, LookupError>> {
        Box::pin(async move { Ok(self.lookup_all(serial, udid).await?) })
    }

    fn release<'a>(
        &'a self,
        serial: &'a str,
        udid: &'a str,
    ) -> BoxFuture<'a, Result<Option<RemoteRelease>, LookupError>> {
        Box::pin(async move { Ok(self.release_lock(serial, udid).await?) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use station_protocol::bypass_code::BypassCode;

    use std::time::Duration;

    use super::*;
    use crate::codes::hook::HookError;
    use crate::codes::intune::IntuneError;
    use crate::codes::kandji::KandjiError;
    use crate::codes::{CodeKind, SourcedCode};

    const GOOD: &str = "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4";
    const OTHER: &str = "8LNYD-DVNKU-GYRC-E6GU-3YFD-CT86";
    const THIRD: &str = "J4DNT-6VT2Y-3LD8-1VV7-AT3U-LW17";

    /// A source answering fixed codes (or failing), counting its calls.
    struct Fixed {
        codes: Vec<(&'static str, CodeKind)>,
        known: bool,
        fail: Option<fn() -> LookupError>,
        release: bool,
        calls: Arc<AtomicUsize>,
    }

    impl Fixed {
        fn new(codes: Vec<(&'static str, CodeKind)>) -> (Self, Arc<AtomicUsize>) {
            let calls = Arc::new(AtomicUsize::new(0));
            let known = !codes.is_empty();
            (
                Fixed {
                    codes,
                    known,
                    fail: None,
                    release: false,
                    calls: calls.clone(),
                },
                calls,
            )
        }

        fn failing(reason: fn() -> LookupError) -> (Self, Arc<AtomicUsize>) {
            let (mut source, calls) = Fixed::new(Vec::new());
            source.fail = Some(reason);
            (source, calls)
        }
    }

    impl CodeLookup for Fixed {
        fn lookup<'a>(
            &'a self,
            _serial: &'a str,
            _udid: &'a str,
        ) -> BoxFuture<'a, Result<Lookup, LookupError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if let Some(reason) = self.fail {
                    return Err(reason());
                }
                let mut lookup = Lookup {
                    known: self.known,
                    ..Lookup::default()
                };
                for (code, kind) in &self.codes {
                    lookup.push(SourcedCode {
                        code: BypassCode::parse(code).expect("code"),
                        kind: *kind,
                        source: "inner-tag".into(),
                    });
                }
                Ok(lookup)
            })
        }

        fn release<'a>(
            &'a self,
            _serial: &'a str,
            _udid: &'a str,
        ) -> BoxFuture<'a, Result<Option<RemoteRelease>, LookupError>> {
            Box::pin(async move {
                if !self.release {
                    return Ok(None);
                }
                match self.fail {
                    Some(reason) => Err(reason()),
                    None => Ok(Some(RemoteRelease {
                        source: "intune".into(),
                        action: "bypassActivationLock".into(),
                        wait: Duration::from_millis(1),
                        ..RemoteRelease::default()
                    })),
                }
            })
        }
    }

    fn tagged(lookup: &Lookup) -> Vec<(String, CodeKind, String)> {
        lookup
            .codes
            .iter()
            .map(|c| (c.code.reveal(), c.kind, c.source.clone()))
            .collect()
    }

    #[tokio::test]
    async fn answers_merge_in_order_without_duplicates_and_failures_do_not_stop_the_chain() {
        let (csv, _) = Fixed::new(vec![(OTHER, CodeKind::Unknown)]);
        let (broken, _) = Fixed::failing(|| KandjiError::Unauthorized.into());
        let (intune, _) = Fixed::new(vec![(GOOD, CodeKind::Device), (OTHER, CodeKind::Device)]);
        let (empty, _) = Fixed::new(Vec::new());
        let chain = Chain::new()
            .with("codes.csv", "csv", csv)
            .with("kandji", "kandji", broken)
            .with("contoso", "intune", intune)
            .with("hook", "command", empty);
        let lookup = chain.lookup_all("c8tj500qf1mn", "U").await.expect("lookup");
        assert!(lookup.known);
        assert_eq!(
            tagged(&lookup),
            vec![
                (
                    OTHER.to_string(),
                    CodeKind::Unknown,
                    "codes.csv".to_string()
                ),
                (GOOD.to_string(), CodeKind::Device, "contoso".to_string()),
            ]
        );
        let answered: Vec<(&str, usize, bool)> = lookup
            .answered
            .iter()
            .map(|a| (a.source.as_str(), a.codes, a.known))
            .collect();
        assert_eq!(
            answered,
            vec![
                ("codes.csv", 1, true),
                ("contoso", 2, true),
                ("hook", 0, false)
            ]
        );
        assert_eq!(
            lookup.failures,
            vec![SourceFailure {
                source: "kandji".into(),
                kind: "kandji",
                reason: "Kandji refused the API token (HTTP 401): check the token and api_url"
                    .into(),
                elapsed_ms: lookup.failures[0].elapsed_ms,
            }]
        );
        assert_eq!(chain.sources()[1], ("kandji", "kandji"));
    }

    #[tokio::test]
    async fn every_source_failing_is_an_error() {
        let (a, _) = Fixed::failing(|| {
            IntuneError::Credential {
                reason: "token refused".into(),
            }
            .into()
        });
        let (b, _) = Fixed::failing(|| {
            HookError::TimedOut {
                after: Duration::from_secs(10),
            }
            .into()
        });
        let chain = Chain::new()
            .with("contoso", "intune", a)
            .with("hook", "command", b);
        let err = chain.lookup_all("S", "U").await.expect_err("all failed");
        assert_eq!(
            err.to_string(),
            "every bypass-code source failed: contoso: Intune credential unusable: token refused; hook: hook timed out after 10s"
        );
        assert!(matches!(
            Chain::new().lookup_all("S", "U").await,
            Err(ChainError::NoSources)
        ));
    }

    /// "No code" is not kept for a whole run: it is asked again once it has aged, while an
    /// answer with codes stays cached.
    #[tokio::test]
    async fn an_answer_without_a_code_is_asked_again_after_the_recheck_time() {
        let (intune, intune_calls) = Fixed::new(vec![(GOOD, CodeKind::Device)]);
        let (empty, empty_calls) = Fixed::new(Vec::new());
        let chain = Chain::new()
            .with_no_code_recheck(Duration::from_millis(300))
            .with("contoso", "intune", intune)
            .with("kandji", "kandji", empty);
        for _ in 0..2 {
            chain.lookup_all("C8TJ500QF1MN", "U").await.expect("lookup");
        }
        assert_eq!(intune_calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            empty_calls.load(Ordering::SeqCst),
            1,
            "within the recheck time"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        let later = chain.lookup_all("C8TJ500QF1MN", "U").await.expect("later");
        assert_eq!(intune_calls.load(Ordering::SeqCst), 1);
        assert_eq!(empty_calls.load(Ordering::SeqCst), 2, "asked again");
        assert!(later.answered[0].cached && !later.answered[1].cached);
        assert_eq!(Chain::new().no_code_recheck, NO_CODE_RECHECK);
    }

    /// Issue 13: after many phones came and went, the cache holds at most its limit (the
    /// newest answers) and no phone is left in the one-at-a-time map.
    #[tokio::test]
    async fn cache_and_turns_stay_bounded_over_many_phones() {
        let (intune, calls) = Fixed::new(vec![(GOOD, CodeKind::Device)]);
        let (kandji, _) = Fixed::new(Vec::new());
        let chain = Chain::new()
            .with("contoso", "intune", intune)
            .with("kandji", "kandji", kandji)
            .with_later_sources(LaterSources::Always)
            .with_cache_limit(8);
        for i in 0..200 {
            let serial = format!("F2L{i:09}");
            let udid = format!("00008030-{i:016X}");
            chain.lookup_all(&serial, &udid).await.expect("lookup");
            let (cache, busy) = chain.held();
            assert!(cache <= 8, "{cache} answers cached after phone {i}");
            assert_eq!(busy, 0, "phones left in `busy` after phone {i}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 200);
        // The newest phone's answers are the ones kept.
        let again = chain
            .lookup_all("F2L000000199", &format!("00008030-{:016X}", 199))
            .await
            .expect("again");
        assert!(again.answered.iter().all(|a| a.cached));
        assert_eq!(calls.load(Ordering::SeqCst), 200);
        // The oldest went.
        let first = chain
            .lookup_all("F2L000000000", &format!("00008030-{:016X}", 0))
            .await
            .expect("first again");
        assert!(!first.answered[0].cached);
        assert_eq!(
            Chain::new()
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .limit(),
            CACHE_LIMIT
        );
    }

    #[tokio::test]
    async fn answers_are_cached_for_the_run_but_failures_are_asked_again() {
        let (intune, intune_calls) = Fixed::new(vec![(GOOD, CodeKind::Device)]);
        let (broken, broken_calls) = Fixed::failing(|| {
            IntuneError::Service {
                status: 503,
                code: "ServiceUnavailable".into(),
                message: String::new(),
            }
            .into()
        });
        let chain = Chain::new()
            .with("contoso", "intune", intune)
            .with("kandji", "kandji", broken);
        let first = chain
            .lookup_all("C8TJ500QF1MN", "00008030-00AA")
            .await
            .expect("first");
        assert!(!first.answered[0].cached);
        // Replugged: same serial and UDID (written differently).
        let again = chain
            .lookup_all(" c8tj500qf1mn", "00008030-00aa")
            .await
            .expect("again");
        assert!(again.answered[0].cached);
        assert_eq!(tagged(&again), tagged(&first));
        assert_eq!(intune_calls.load(Ordering::SeqCst), 1);
        assert_eq!(broken_calls.load(Ordering::SeqCst), 2);
        // Another phone is another lookup.
        chain
            .lookup_all("F2L000000001", "00008030-00BB")
            .await
            .expect("other");
        assert_eq!(intune_calls.load(Ordering::SeqCst), 2);
        // Codes that did not release the lock are forgotten: the next attempt asks again,
        // and only for that phone.
        chain.forget("c8tj500qf1mn", "00008030-00aa");
        let fresh = chain
            .lookup_all("C8TJ500QF1MN", "00008030-00AA")
            .await
            .expect("after forget");
        assert!(!fresh.answered[0].cached);
        assert_eq!(intune_calls.load(Ordering::SeqCst), 3);
        let other = chain
            .lookup_all("F2L000000001", "00008030-00BB")
            .await
            .expect("other again");
        assert!(other.answered[0].cached);
        // Concurrent lookups of one phone ask once.
        let (slow, slow_calls) = Fixed::new(vec![(THIRD, CodeKind::Server)]);
        let chain = Chain::new().with("kandji", "kandji", slow);
        let (a, b) = tokio::join!(chain.lookup_all("S1", "U"), chain.lookup_all("S1", "U"));
        assert_eq!(tagged(&a.expect("a")), tagged(&b.expect("b")));
        assert_eq!(slow_calls.load(Ordering::SeqCst), 1);
        assert_eq!(chain.held().1, 0, "both turns are over");
    }

    /// `when_no_code`: a later source is asked only when those before it gave no code; by
    /// default every source is asked.
    #[tokio::test]
    async fn later_sources_can_wait_for_earlier_ones_to_come_up_empty() {
        let (intune, _) = Fixed::new(vec![(GOOD, CodeKind::Device)]);
        let (kandji, kandji_calls) = Fixed::new(vec![(OTHER, CodeKind::Server)]);
        let chain = Chain::new()
            .with_later_sources(LaterSources::WhenNoCode)
            .with("contoso", "intune", intune)
            .with("kandji", "kandji", kandji);
        let lookup = chain.lookup_all("S1", "U").await.expect("lookup");
        assert_eq!(
            tagged(&lookup),
            vec![(GOOD.to_string(), CodeKind::Device, "contoso".to_string())]
        );
        assert_eq!(kandji_calls.load(Ordering::SeqCst), 0, "not asked");
        assert_eq!(lookup.answered.len(), 1);

        // An earlier source without a code, or failing, lets the next one be asked.
        let (empty, _) = Fixed::new(Vec::new());
        let (broken, _) = Fixed::failing(|| KandjiError::Unauthorized.into());
        let (kandji, kandji_calls) = Fixed::new(vec![(OTHER, CodeKind::Server)]);
        let chain = Chain::new()
            .with_later_sources(LaterSources::WhenNoCode)
            .with("contoso", "intune", empty)
            .with("broken", "kandji", broken)
            .with("kandji", "kandji", kandji);
        let lookup = chain.lookup_all("S2", "U").await.expect("lookup");
        assert_eq!(
            tagged(&lookup),
            vec![(OTHER.to_string(), CodeKind::Server, "kandji".to_string())]
        );
        assert_eq!(kandji_calls.load(Ordering::SeqCst), 1);
        assert_eq!(lookup.failures.len(), 1);

        // The default asks them all.
        let (intune, _) = Fixed::new(vec![(GOOD, CodeKind::Device)]);
        let (kandji, kandji_calls) = Fixed::new(vec![(OTHER, CodeKind::Server)]);
        let chain = Chain::new()
            .with("contoso", "intune", intune)
            .with("kandji", "kandji", kandji);
        assert_eq!(chain.later_sources, LaterSources::Always);
        let lookup = chain.lookup_all("S3", "U").await.expect("lookup");
        assert_eq!(lookup.codes.len(), 2);
        assert_eq!(kandji_calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_first_source_able_to_release_does() {
        let (csv, _) = Fixed::new(Vec::new());
        let (mut intune, _) = Fixed::new(Vec::new());
        intune.release = true;
        let chain = Chain::new()
            .with("codes.csv", "csv", csv)
            .with("contoso", "intune", intune);
        let release = chain.release_lock("S", "U").await.expect("release");
        assert_eq!(
            release.map(|r| r.action),
            Some("bypassActivationLock".to_string())
        );

        let (csv, _) = Fixed::new(Vec::new());
        assert_eq!(
            Chain::new()
                .with("codes.csv", "csv", csv)
                .release_lock("S", "U")
                .await
                .expect("none"),
            None
        );

        let (mut broken, _) = Fixed::failing(|| {
            IntuneError::Permission {
                status: 403,
                code: "Forbidden".into(),
                message: String::new(),
                permission: "DeviceManagementManagedDevices.PrivilegedOperations.All",
            }
            .into()
        });
        broken.release = true;
        let err = Chain::new()
            .with("contoso", "intune", broken)
            .release_lock("S", "U")
            .await
            .expect_err("failed");
        assert!(err.to_string().contains("HTTP 403"), "{err}");
    }
}
