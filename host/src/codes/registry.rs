//! The code-source types the configuration can name, registered once: `station run`,
//! `station codes lookup` and `station config check` all build and check a configured
//! source through `registered`, so a new source is one line here (see
//! docs/code-sources.md).

use std::collections::BTreeSet;
use std::marker::PhantomData;

use serde::Serialize;
use station_config::{Environment, SourceConfig};

use super::csv_file::CsvCodes;
use super::hook::Hook;
use super::intune::Intune;
use super::kandji::Kandji;
use super::CodeLookup;
use crate::http::RetryPolicy;

/// The one place naming every source type.
fn registered(source: &SourceConfig) -> Box<dyn Registered + '_> {
    match source {
        SourceConfig::Csv(config) => Entry::<CsvCodes>::boxed(config),
        SourceConfig::Intune(config) => Entry::<Intune>::boxed(config),
        SourceConfig::Kandji(config) => Entry::<Kandji>::boxed(config),
        SourceConfig::Command(config) => Entry::<Hook>::boxed(config),
    }
}

/// What building a source may use besides its own configuration.
pub struct BuildContext<'a> {
    /// The source's name in reports and code tags.
    pub name: &'a str,
    pub retry: RetryPolicy,
    /// Where secrets named by environment variable are read.
    pub env: &'a Environment,
    /// The variables that hold `{ env = … }` secrets of any source: never given to a hook.
    pub secret_env: &'a BTreeSet<String>,
}

/// What `station config check` says of a source besides whether it builds.
#[derive(Debug, Default)]
pub struct Description {
    /// One line: the file, tenant, URL or program, and where its secret comes from.
    pub detail: String,
    /// Valid but unwise; the run still starts.
    pub warning: Option<String>,
}

/// A code-source type: its configuration, how it is built from it and how it is described.
pub trait CodeSource: CodeLookup + Sized + 'static {
    type Config;

    /// Reads files and loads secrets and keys; `Err` says why the run would refuse to start
    /// (never a secret's value).
    fn from_config(config: &Self::Config, context: &BuildContext<'_>) -> Result<Self, String>;

    /// Describes the configuration without building it (no secret is loaded).
    fn describe(config: &Self::Config) -> Description;
}

/// One configured source, its type erased.
trait Registered {
    fn build(&self, context: &BuildContext<'_>) -> Result<Box<dyn CodeLookup>, String>;
    fn describe(&self) -> Description;
}

struct Entry<'a, S: CodeSource> {
    config: &'a S::Config,
    source: PhantomData<fn() -> S>,
}

impl<'a, S: CodeSource> Entry<'a, S> {
    fn boxed(config: &'a S::Config) -> Box<dyn Registered + 'a> {
        Box::new(Entry::<S> {
            config,
            source: PhantomData,
        })
    }
}

impl<S: CodeSource> Registered for Entry<'_, S> {
    fn build(&self, context: &BuildContext<'_>) -> Result<Box<dyn CodeLookup>, String> {
        Ok(Box::new(S::from_config(self.config, context)?))
    }

    fn describe(&self) -> Description {
        S::describe(self.config)
    }
}

/// Builds one configured source as `station run` does before its first phone;
/// `secret_env` is [`StationConfig::secret_env_names`](station_config::StationConfig::secret_env_names).
pub fn build(
    source: &SourceConfig,
    retry: RetryPolicy,
    env: &Environment,
    secret_env: &BTreeSet<String>,
) -> Result<Box<dyn CodeLookup>, String> {
    registered(source).build(&BuildContext {
        name: source.name(),
        retry,
        env,
        secret_env,
    })
}

/// One source in `station config check`: what it is, and whether it builds the way
/// `station run` builds it (built once; its secrets are loaded once).
#[derive(Debug, Serialize)]
pub struct SourceCheck {
    pub name: String,
    pub r#type: &'static str,
    pub detail: String,
    /// `None` when usable; else why `station run` would refuse it (never a secret's value).
    pub problem: Option<String>,
    #[serde(skip)]
    pub warning: Option<String>,
}

pub fn check(
    source: &SourceConfig,
    retry: RetryPolicy,
    env: &Environment,
    secret_env: &BTreeSet<String>,
) -> SourceCheck {
    let entry = registered(source);
    let problem = entry
        .build(&BuildContext {
            name: source.name(),
            retry,
            env,
            secret_env,
        })
        .err();
    let Description { detail, warning } = entry.describe();
    SourceCheck {
        name: source.name().to_string(),
        r#type: source.kind(),
        detail,
        problem,
        warning: warning
            .map(|w| format!("code source `{}` ({}): {w}", source.name(), source.kind())),
    }
}
