//! The command hook: the escape hatch for an MDM without an API (Jamf workflows, in-house
//! systems). The configured program runs directly (no shell) with stdin closed, in a
//! cleared environment holding only
//!
//! - `STATION_SERIAL`: the phone's serial number,
//! - `STATION_UDID`: its UDID,
//! - `STATION_SOURCE_NAME`: the source's name in the configuration,
//! - `PATH`, `HOME`, `LANG`, `LC_*` and `TZ` from the station's environment,
//! - the station's variables that the source's `pass_env` names,
//!
//! so that a customer's script never sees the station's secrets: a variable that holds a
//! `{ env = … }` secret of any source is left out even when `pass_env` lists it.
//!
//! It prints, on stdout, either
//!
//! - one code per line (blank lines and lines starting with `#` are skipped), or
//! - JSON: `["CODE", …]`, or
//!   `{"codes": ["CODE" | {"code": "CODE", "kind": "device|server|unknown"}, …], "known": true}`
//!   (`known`, default: whether any code is given, says the device is the organisation's
//!   even without a code).
//!
//! Empty output means "not ours". A non-zero exit, a run longer than `timeout_secs`
//! (the process group is killed), more than [`MAX_STDOUT`] bytes, or output that is not
//! codes is a source error; the error names the line, never its text. Of stderr, only the
//! first line is logged, cut short, and not at all if it may hold a code.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use station_config::CommandSource;
use station_protocol::bypass_code::BypassCode;
use tokio::io::{AsyncRead, AsyncReadExt};
use zeroize::Zeroizing;

use super::answer::json_error;
use super::registry::{BuildContext, CodeSource, Description};
use super::{CodeKind, CodeLookup, Lookup, LookupError, SourcedCode};
use crate::redact::scrub;

/// Largest stdout accepted; a few codes take a few hundred bytes.
pub const MAX_STDOUT: usize = 64 * 1024;
/// Stderr read at most (only its first line is used).
const MAX_STDERR: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct HookSettings {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub timeout: Duration,
    /// Station variables passed on besides the base set ([`BASE_ENV`], `LC_*`).
    pub pass_env: Vec<String>,
    /// Variables that hold secrets: never passed, whatever the lists say.
    pub withheld_env: BTreeSet<String>,
}

/// The station's variables every hook gets (with `LC_*`): what a program needs to run and
/// to read text, nothing about the station.
pub const BASE_ENV: &[&str] = &["PATH", "HOME", "LANG", "TZ"];

/// The variables the station sets for the hook itself.
pub const CONTEXT_ENV: &[&str] = &["STATION_SERIAL", "STATION_UDID", "STATION_SOURCE_NAME"];

/// What a hook inherits from `station_env` (the station's own environment): the base set,
/// `LC_*` and `pass_env`, less the withheld names. The context variables are set apart.
pub fn inherited_env(
    station_env: impl IntoIterator<Item = (OsString, OsString)>,
    pass_env: &[String],
    withheld: &BTreeSet<String>,
) -> Vec<(OsString, OsString)> {
    station_env
        .into_iter()
        .filter(|(name, _)| {
            let Some(name) = name.to_str() else {
                return false;
            };
            let wanted = BASE_ENV.contains(&name)
                || name.starts_with("LC_")
                || pass_env.iter().any(|p| p == name);
            wanted && !withheld.contains(name) && !CONTEXT_ENV.contains(&name)
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot run hook {program}: {reason}")]
    Spawn { program: PathBuf, reason: String },
    #[error("hook timed out after {}s", .after.as_secs_f64())]
    TimedOut { after: Duration },
    #[error("hook exited with {status}{}", stderr_text(.stderr))]
    Failed {
        status: ExitStatus,
        stderr: Option<String>,
    },
    #[error("hook printed more than {MAX_STDOUT} bytes")]
    TooMuchOutput,
    #[error("hook output is not UTF-8")]
    NotText,
    #[error("hook output line {line} is not a bypass code ({reason})")]
    BadLine { line: usize, reason: String },
    #[error("hook JSON output: {reason}")]
    BadJson { reason: String },
}

fn stderr_text(stderr: &Option<String>) -> String {
    stderr
        .as_deref()
        .map_or(String::new(), |line| format!(": {line}"))
}

/// A JSON code entry: a bare string or `{code, kind}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum JsonCode {
    Bare(String),
    Tagged {
        code: String,
        #[serde(default)]
        kind: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonOutput {
    List(Vec<JsonCode>),
    Object {
        codes: Vec<JsonCode>,
        #[serde(default)]
        known: Option<bool>,
    },
}

pub struct Hook {
    settings: HookSettings,
}

impl Hook {
    pub fn new(settings: HookSettings) -> Self {
        Hook { settings }
    }

    pub async fn fetch(&self, serial: &str, udid: &str) -> Result<Lookup, HookError> {
        let stdout = self.run(serial, udid).await?;
        let text = std::str::from_utf8(&stdout).map_err(|_| HookError::NotText)?;
        parse_output(text, &self.settings.name)
    }

    async fn run(&self, serial: &str, udid: &str) -> Result<Zeroizing<Vec<u8>>, HookError> {
        let s = &self.settings;
        let inherited = inherited_env(std::env::vars_os(), &s.pass_env, &s.withheld_env);
        let mut child = tokio::process::Command::new(&s.program)
            .args(&s.args)
            .env_clear()
            .envs(inherited)
            .env("STATION_SERIAL", serial)
            .env("STATION_UDID", udid)
            .env("STATION_SOURCE_NAME", &s.name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that a timeout also ends what it started.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| HookError::Spawn {
                program: s.program.clone(),
                reason: e.to_string(),
            })?;
        let group = child.id();
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(HookError::Spawn {
                program: s.program.clone(),
                reason: "no pipes".into(),
            });
        };
        let finished = tokio::time::timeout(s.timeout, async {
            let (out, err) = tokio::join!(
                read_limited(stdout, MAX_STDOUT),
                read_limited(stderr, MAX_STDERR)
            );
            (out, err, child.wait().await)
        })
        .await;
        let Ok((out, err, status)) = finished else {
            kill_group(group);
            let _ = child.kill().await;
            tracing::warn!(source = %s.name, program = %s.program.display(), "hook timed out; killed");
            return Err(HookError::TimedOut { after: s.timeout });
        };
        let status = status.map_err(|e| HookError::Spawn {
            program: s.program.clone(),
            reason: e.to_string(),
        })?;
        let stderr_line = first_stderr_line(&err.0);
        if let Some(line) = &stderr_line {
            tracing::debug!(source = %s.name, stderr = %line, "hook stderr (first line)");
        }
        // Before the status: a flood is stopped by closing the pipe, which kills the writer.
        if out.1 {
            return Err(HookError::TooMuchOutput);
        }
        if !status.success() {
            return Err(HookError::Failed {
                status,
                stderr: stderr_line,
            });
        }
        Ok(Zeroizing::new(out.0))
    }
}

/// Reads up to `limit` bytes; the flag says there was more (the rest is not read: the
/// closed pipe stops the writer).
async fn read_limited(reader: impl AsyncRead + Unpin, limit: usize) -> (Vec<u8>, bool) {
    let mut bytes = Vec::new();
    let limit_plus_one = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let _ = reader.take(limit_plus_one).read_to_end(&mut bytes).await;
    let over = bytes.len() > limit;
    bytes.truncate(limit);
    (bytes, over)
}

/// The first line of stderr, scrubbed; withheld whole if it may hold a code or a secret.
fn first_stderr_line(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let (line, replaced) = scrub(&text);
    match (line.is_empty(), replaced) {
        (true, _) => None,
        (false, true) => Some("(stderr withheld: it may hold a code)".into()),
        (false, false) => Some(line),
    }
}

fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    // The group may be gone already; nothing to do then.
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

/// Reads the hook's output: lines of codes or JSON (see the module documentation).
pub fn parse_output(text: &str, source: &str) -> Result<Lookup, HookError> {
    let mut lookup = parse_codes(text, source)?;
    let known = lookup.known;
    lookup.explain_absence(|| {
        if known {
            format!("known to hook {source}, no code")
        } else {
            format!("not known to hook {source}")
        }
    });
    Ok(lookup)
}

fn parse_codes(text: &str, source: &str) -> Result<Lookup, HookError> {
    let trimmed = text.trim_start();
    let tag = |code: BypassCode, kind: CodeKind| SourcedCode {
        code,
        kind,
        source: source.to_string(),
    };
    let mut lookup = Lookup::default();
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        let output: JsonOutput = serde_json::from_str(trimmed).map_err(|e| HookError::BadJson {
            reason: json_error(&e),
        })?;
        let (codes, known) = match output {
            JsonOutput::List(codes) => (codes, None),
            JsonOutput::Object { codes, known } => (codes, known),
        };
        lookup.known = known.unwrap_or(!codes.is_empty());
        for (index, entry) in codes.into_iter().enumerate() {
            let (text, kind) = match entry {
                JsonCode::Bare(code) => (Zeroizing::new(code), None),
                JsonCode::Tagged { code, kind } => (Zeroizing::new(code), kind),
            };
            let bad = |reason: String| HookError::BadJson {
                reason: format!("codes[{index}]: {reason}"),
            };
            let code = BypassCode::parse(&text).map_err(|e| bad(e.to_string()))?;
            let kind = match kind {
                None => CodeKind::Unknown,
                Some(k) => CodeKind::parse(&k)
                    .ok_or_else(|| bad("kind must be device, server or unknown".into()))?,
            };
            lookup.push(tag(code, kind));
        }
        // `push` marks the device known; an explicit `"known": false` with codes is odd but
        // codes win.
        return Ok(lookup);
    }
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let code = BypassCode::parse(line).map_err(|e| HookError::BadLine {
            line: index + 1,
            reason: e.to_string(),
        })?;
        lookup.push(tag(code, CodeKind::Unknown));
    }
    Ok(lookup)
}

impl CodeLookup for Hook {
    fn lookup<'a>(
        &'a self,
        serial: &'a str,
        udid: &'a str,
    ) -> BoxFuture<'a, Result<Lookup, LookupError>> {
        Box::pin(async move { Ok(self.fetch(serial, udid).await?) })
    }
}

impl CodeSource for Hook {
    type Config = CommandSource;

    fn from_config(config: &CommandSource, context: &BuildContext<'_>) -> Result<Self, String> {
        Ok(Hook::new(HookSettings {
            name: context.name.to_string(),
            program: config.program.clone(),
            args: config.args.clone(),
            timeout: Duration::from_secs(config.timeout_secs),
            pass_env: config.pass_env.clone(),
            withheld_env: context.secret_env.iter().cloned().collect(),
        }))
    }

    fn describe(config: &CommandSource) -> Description {
        // The run starts without the program (each look-up then fails and says why), so a
        // missing or non-executable one is a warning, not a refusal.
        let warning = match std::fs::metadata(&config.program) {
            Ok(meta)
                if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0 =>
            {
                None
            }
            Ok(_) => Some(format!("{} is not executable", config.program.display())),
            Err(e) => Some(format!("{}: {e}", config.program.display())),
        };
        let passed = if config.pass_env.is_empty() {
            String::new()
        } else {
            format!("; passes {}", config.pass_env.join(", "))
        };
        Description {
            detail: format!(
                "runs {} (at most {} s{passed})",
                config.program.display(),
                config.timeout_secs
            ),
            warning,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    const GOOD: &str = "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4";
    const OTHER: &str = "8LNYD-DVNKU-GYRC-E6GU-3YFD-CT86";

    fn script(dir: &tempfile::TempDir, name: &str, body: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write hook");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        path
    }

    fn hook(program: PathBuf, timeout: Duration) -> Hook {
        Hook::new(HookSettings {
            name: "jamf-hook".into(),
            program,
            args: vec!["--format".into(), "text".into()],
            timeout,
            pass_env: Vec::new(),
            withheld_env: BTreeSet::new(),
        })
    }

    fn revealed(lookup: &Lookup) -> Vec<String> {
        lookup.codes.iter().map(|c| c.code.reveal()).collect()
    }

    #[tokio::test]
    async fn lines_with_the_environment_and_arguments() {
        let dir = tempfile::tempdir().expect("dir");
        // Echoes a code only for the right serial, UDID, name and arguments; stdin is closed.
        let program = script(
            &dir,
            "hook",
            &format!(
                r##"[ "$STATION_SERIAL" = C8TJ500QF1MN ] && [ "$STATION_UDID" = 00008030-AA ] && [ "$STATION_SOURCE_NAME" = jamf-hook ] && [ "$1 $2" = "--format text" ] || exit 3
read -r x && exit 4
echo "# codes for $STATION_SERIAL"
echo "{}"
echo
echo "{GOOD}"
echo "{OTHER}""##,
                GOOD.to_lowercase()
            ),
        );
        let lookup = hook(program, Duration::from_secs(5))
            .fetch("C8TJ500QF1MN", "00008030-AA")
            .await
            .expect("lookup");
        assert!(lookup.known);
        assert_eq!(revealed(&lookup), vec![GOOD, OTHER]);
        assert!(lookup.codes.iter().all(|c| c.source == "jamf-hook"));
    }

    #[test]
    fn the_hook_inherits_only_the_base_set_and_pass_env_never_a_secret() {
        let station: Vec<(OsString, OsString)> = [
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/var/lib/station"),
            ("LANG", "C.UTF-8"),
            ("LC_TIME", "en_GB.UTF-8"),
            ("TZ", "UTC"),
            ("JAMF_URL", "https://jamf.example"),
            ("STATION_INTUNE_SECRET", "intune-secret-value"),
            ("STATION_FAKE_SECRET", "fake-secret-value"),
            ("STATION_CONFIG", "/etc/station/station.toml"),
            ("STATION_SERIAL", "spoofed"),
            ("AWS_SECRET_ACCESS_KEY", "aws"),
        ]
        .into_iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect();
        let pass_env = vec![
            "JAMF_URL".to_string(),
            "STATION_INTUNE_SECRET".to_string(),
            "STATION_SERIAL".to_string(),
            "NOT_SET".to_string(),
        ];
        let withheld = BTreeSet::from(["STATION_INTUNE_SECRET".to_string()]);
        let names: Vec<String> = inherited_env(station, &pass_env, &withheld)
            .into_iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["PATH", "HOME", "LANG", "LC_TIME", "TZ", "JAMF_URL"],
            "the secret and the context variables are never inherited"
        );
    }

    #[tokio::test]
    async fn the_hook_runs_in_a_cleared_environment() {
        let dir = tempfile::tempdir().expect("dir");
        let dump = dir.path().join("environ");
        // The shell's own start-up environment, exactly as it was given (no shell additions).
        let program = script(
            &dir,
            "dump",
            &format!("tr '\\000' '\\n' < /proc/$$/environ > {}", dump.display()),
        );
        let lookup = hook(program, Duration::from_secs(5))
            .fetch("C8TJ500QF1MN", "00008030-AA")
            .await
            .expect("lookup");
        assert!(!lookup.known && lookup.codes.is_empty());
        let text = std::fs::read_to_string(&dump).expect("dump");
        let mut names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        names.sort_unstable();
        let allowed = |name: &str| {
            BASE_ENV.contains(&name) || CONTEXT_ENV.contains(&name) || name.starts_with("LC_")
        };
        assert!(names.iter().all(|n| allowed(n)), "{names:?}");
        assert!(text.contains("STATION_SERIAL=C8TJ500QF1MN\n"), "{text}");
        assert!(text.contains("STATION_SOURCE_NAME=jamf-hook\n"), "{text}");
    }

    #[tokio::test]
    async fn json_list_and_object() {
        let dir = tempfile::tempdir().expect("dir");
        let list = script(&dir, "list", &format!("echo '[\"{GOOD}\"]'"));
        let lookup = hook(list, Duration::from_secs(5))
            .fetch("S", "U")
            .await
            .expect("list");
        assert_eq!(revealed(&lookup), vec![GOOD]);
        assert_eq!(lookup.codes[0].kind, CodeKind::Unknown);

        let object = script(
            &dir,
            "object",
            &format!(
                "echo '{{\"codes\": [{{\"code\": \"{GOOD}\", \"kind\": \"server\"}}, \"{OTHER}\"], \"known\": true}}'"
            ),
        );
        let lookup = hook(object, Duration::from_secs(5))
            .fetch("S", "U")
            .await
            .expect("object");
        assert_eq!(revealed(&lookup), vec![GOOD, OTHER]);
        assert_eq!(lookup.codes[0].kind, CodeKind::Server);

        let known = script(&dir, "known", "echo '{\"codes\": [], \"known\": true}'");
        let lookup = hook(known, Duration::from_secs(5))
            .fetch("S", "U")
            .await
            .expect("known");
        assert!(lookup.known && lookup.codes.is_empty());
        assert_eq!(lookup.absent, ["known to hook jamf-hook, no code"]);

        let empty = script(&dir, "empty", "exit 0");
        let lookup = hook(empty, Duration::from_secs(5))
            .fetch("S", "U")
            .await
            .expect("empty");
        assert!(!lookup.known && lookup.codes.is_empty());
        assert_eq!(lookup.absent, ["not known to hook jamf-hook"]);
    }

    #[tokio::test]
    async fn garbage_names_the_line_never_its_text() {
        let dir = tempfile::tempdir().expect("dir");
        let program = script(
            &dir,
            "garbage",
            &format!("echo {GOOD}\necho 'password=HUNTER2XYZ'"),
        );
        let err = hook(program, Duration::from_secs(5))
            .fetch("S", "U")
            .await
            .expect_err("garbage");
        let text = err.to_string();
        assert!(matches!(err, HookError::BadLine { line: 2, .. }), "{text}");
        assert!(
            !text.contains("HUNTER2") && !text.contains("password"),
            "{text}"
        );

        let program = script(
            &dir,
            "badjson",
            &format!("echo '{{\"codes\": \"{GOOD}\"}}'"),
        );
        let err = hook(program, Duration::from_secs(5))
            .fetch("S", "U")
            .await
            .expect_err("bad json");
        assert!(matches!(err, HookError::BadJson { .. }), "{err}");
        assert!(!err.to_string().contains("PUYVY"), "{err}");

        let program = script(&dir, "binary", "printf '\\377\\376'");
        assert!(matches!(
            hook(program, Duration::from_secs(5)).fetch("S", "U").await,
            Err(HookError::NotText)
        ));
    }

    #[tokio::test]
    async fn a_hanging_hook_is_killed_at_its_time_limit() {
        let dir = tempfile::tempdir().expect("dir");
        let marker = dir.path().join("survived");
        // The grandchild would write the marker if the process group survived the kill.
        let program = script(
            &dir,
            "hang",
            &format!("(sleep 2; touch {}) &\nsleep 30", marker.display()),
        );
        let started = Instant::now();
        let err = hook(program, Duration::from_millis(300))
            .fetch("S", "U")
            .await
            .expect_err("hang");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(err.to_string(), "hook timed out after 0.3s");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "the hook's children outlived the kill");
    }

    #[tokio::test]
    async fn failures_show_the_first_stderr_line_unless_it_may_be_a_code() {
        let dir = tempfile::tempdir().expect("dir");
        let program = script(
            &dir,
            "fail",
            "echo 'jamf: 401 unauthorized' >&2\necho more >&2\nexit 2",
        );
        let err = hook(program, Duration::from_secs(5))
            .fetch("S", "U")
            .await
            .expect_err("fail");
        assert_eq!(
            err.to_string(),
            "hook exited with exit status: 2: jamf: 401 unauthorized"
        );
        let program = script(&dir, "leak", &format!("echo 'tried {GOOD}' >&2\nexit 1"));
        let err = hook(program, Duration::from_secs(5))
            .fetch("S", "U")
            .await
            .expect_err("fail");
        assert!(
            err.to_string()
                .ends_with("(stderr withheld: it may hold a code)"),
            "{err}"
        );

        let program = script(&dir, "flood", "yes 3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4");
        assert!(matches!(
            hook(program, Duration::from_secs(5)).fetch("S", "U").await,
            Err(HookError::TooMuchOutput)
        ));

        let err = hook(dir.path().join("missing"), Duration::from_secs(5))
            .fetch("S", "U")
            .await
            .expect_err("missing");
        assert!(matches!(err, HookError::Spawn { .. }), "{err}");
    }
}
