//! `station codes lookup`: asks the configured bypass-code sources about one serial number
//! and says which answered, how many codes each gave, and the codes, masked unless the
//! operator asks for them whole (`--reveal`, to type one on the phone).

use std::fmt::Write as _;

use serde::Serialize;
use station_config::StationConfig;

use crate::codes::chain::Chain;
use crate::codes::{CodeKind, Lookup};
use crate::error::{exit, StationError};

/// Long help of `station codes lookup`, with the JSON shape.
pub const LOOKUP_HELP: &str = "\
Asks every configured bypass-code source ([[codes.sources]] in the configuration) about one \
serial number and prints which sources answered, how many codes each gave, and the codes in \
the order `station activate` tries them, masked (3UM43-…-FKA4). --reveal prints them whole, \
for an operator who has to type one on the phone; codes never appear in logs.

Exit status: 0 when at least one source answered (even without a code), 1 when every source \
failed, 2 when no source is configured or one cannot be set up.

With --json, one object:
  {
    \"serial\": \"C8TJ500QF1MN\",
    \"udid\": \"00008030-001A2B3C4D5E802E\",          (null without --udid)
    \"known\": true,                                  (some source knows the device)
    \"revealed\": false,                              (whether codes are whole)
    \"sources\": [                                    (in configuration order)
      {\"source\": \"contoso\", \"type\": \"intune\", \"status\": \"answered\",
       \"known\": true, \"codes\": 2, \"cached\": false},
      {\"source\": \"kandji\", \"type\": \"kandji\", \"status\": \"failed\",
       \"reason\": \"Kandji refused the API token (HTTP 401): …\"}
    ],
    \"codes\": [                                      (merged, without duplicates)
      {\"code\": \"3UM43-…-FKA4\", \"kind\": \"device\", \"source\": \"contoso\"}
    ]
  }
`kind` is device (device-generated), server (MDM-generated) or unknown.";

pub struct LookupArgs<'a> {
    pub serial: &'a str,
    pub udid: Option<&'a str>,
    pub reveal: bool,
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct SourceRow<'a> {
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    known: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    codes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cached: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct CodeRow<'a> {
    code: String,
    kind: CodeKind,
    source: &'a str,
}

#[derive(Debug, Serialize)]
struct LookupOutput<'a> {
    serial: &'a str,
    udid: Option<&'a str>,
    known: bool,
    revealed: bool,
    sources: Vec<SourceRow<'a>>,
    codes: Vec<CodeRow<'a>>,
}

/// Runs the lookup and renders it (text or JSON).
pub async fn lookup(config: &StationConfig, args: LookupArgs<'_>) -> Result<String, StationError> {
    let chain = Chain::configured(config)?.ok_or_else(|| {
        StationError::new(
            "codes-not-configured",
            exit::USAGE,
            "no bypass-code source is configured",
        )
        .help("add [[codes.sources]] to the configuration (`station config example` shows them)")
    })?;
    let serial = args.serial.trim();
    let lookup = chain
        .lookup_all(serial, args.udid.unwrap_or_default())
        .await
        .map_err(|e| {
            StationError::new("codes-sources-failed", exit::FAILURE, e.to_string())
                .help("fix the sources named above; `station config check` validates the file")
        })?;
    let output = LookupOutput {
        serial,
        udid: args.udid,
        known: lookup.known,
        revealed: args.reveal,
        sources: source_rows(&chain, &lookup),
        codes: lookup
            .codes
            .iter()
            .map(|c| CodeRow {
                code: if args.reveal {
                    c.code.reveal()
                } else {
                    c.code.masked()
                },
                kind: c.kind,
                source: &c.source,
            })
            .collect(),
    };
    if args.json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&output).unwrap_or_default()
        ));
    }
    Ok(render_text(&output))
}

/// Every configured source in order: its answer or its failure.
fn source_rows<'a>(chain: &'a Chain, lookup: &'a Lookup) -> Vec<SourceRow<'a>> {
    chain
        .sources()
        .into_iter()
        .map(|(name, kind)| {
            let answered = lookup.answered.iter().find(|a| a.source == name);
            let failed = lookup.failures.iter().find(|f| f.source == name);
            SourceRow {
                source: name,
                kind,
                status: if answered.is_some() {
                    "answered"
                } else {
                    "failed"
                },
                known: answered.map(|a| a.known),
                codes: answered.map(|a| a.codes),
                cached: answered.map(|a| a.cached),
                reason: failed.map(|f| f.reason.as_str()),
            }
        })
        .collect()
}

fn render_text(output: &LookupOutput<'_>) -> String {
    let answered = output
        .sources
        .iter()
        .filter(|s| s.status == "answered")
        .count();
    let mut text = format!(
        "serial {}: {} code(s) from {answered} of {} source(s)\n",
        output.serial,
        output.codes.len(),
        output.sources.len()
    );
    let width = output
        .sources
        .iter()
        .map(|s| s.source.len() + s.kind.len() + 3)
        .max()
        .unwrap_or(0);
    for source in &output.sources {
        let label = format!("{} ({})", source.source, source.kind);
        let status = match (source.codes, source.reason) {
            (Some(codes), _) => {
                let known = if source.known == Some(true) {
                    "device known"
                } else {
                    "device not known"
                };
                format!("{codes} code(s), {known}")
            }
            (None, Some(reason)) => format!("failed: {reason}"),
            (None, None) => "failed".to_string(),
        };
        let _ = writeln!(text, "  {label:<width$}  {status}");
    }
    if output.codes.is_empty() {
        text.push_str(if output.known {
            "no code: the device is known but no source holds a code (not supervised, or the code expired)\n"
        } else {
            "no code: no source knows this serial\n"
        });
        return text;
    }
    text.push_str("codes, in the order `station activate` tries them:\n");
    for code in &output.codes {
        let kind = crate::render::wire_name(&code.kind);
        let _ = writeln!(text, "  {}  {kind:<7}  {}", code.code, code.source);
    }
    if !output.revealed {
        text.push_str("(masked; --reveal prints them whole)\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_csv(dir: &tempfile::TempDir, rows: &str) -> StationConfig {
        let csv = dir.path().join("codes.csv");
        std::fs::write(
            &csv,
            format!("serial_number,udid,bypass_code,code_kind,source,retrieved_at\n{rows}"),
        )
        .expect("write csv");
        let text = format!(
            "[[codes.sources]]\ntype = \"csv\"\nname = \"export\"\npath = \"{}\"\n\n[[codes.sources]]\ntype = \"command\"\nname = \"broken-hook\"\nprogram = \"{}\"\n",
            csv.display(),
            dir.path().join("missing-hook").display()
        );
        StationConfig::parse(&text, &dir.path().join("station.toml")).expect("config")
    }

    #[tokio::test]
    async fn masked_unless_revealed_with_every_source_reported() {
        let dir = tempfile::tempdir().expect("dir");
        let config = config_with_csv(
            &dir,
            "C8TJ500QF1MN,,3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4,device,intune,\n",
        );
        let args = |reveal, json| LookupArgs {
            serial: "C8TJ500QF1MN",
            udid: None,
            reveal,
            json,
        };
        let text = lookup(&config, args(false, false)).await.expect("text");
        assert!(text.contains("3UM43-…-FKA4  device   export"), "{text}");
        assert!(
            text.contains("broken-hook (command)  failed: cannot run hook"),
            "{text}"
        );
        assert!(!text.contains("PUYVY"), "{text}");

        let json: serde_json::Value =
            serde_json::from_str(&lookup(&config, args(false, true)).await.expect("json"))
                .expect("valid json");
        assert_eq!(json["codes"][0]["code"], "3UM43-…-FKA4");
        assert_eq!(json["sources"][0]["status"], "answered");
        assert_eq!(json["sources"][0]["codes"], 1);
        assert_eq!(json["sources"][1]["status"], "failed");
        assert_eq!(json["revealed"], false);

        let revealed = lookup(&config, args(true, false)).await.expect("reveal");
        assert!(
            revealed.contains("3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4"),
            "{revealed}"
        );
    }

    #[tokio::test]
    async fn no_sources_and_all_failed_are_errors() {
        let err = lookup(
            &StationConfig::default(),
            LookupArgs {
                serial: "S",
                udid: None,
                reveal: false,
                json: false,
            },
        )
        .await
        .expect_err("no sources");
        assert_eq!(err.code, "codes-not-configured");

        let dir = tempfile::tempdir().expect("dir");
        let text = format!(
            "[[codes.sources]]\ntype = \"command\"\nprogram = \"{}\"\n",
            dir.path().join("missing").display()
        );
        let config = StationConfig::parse(&text, &dir.path().join("s.toml")).expect("config");
        let err = lookup(
            &config,
            LookupArgs {
                serial: "S",
                udid: Some("U"),
                reveal: false,
                json: true,
            },
        )
        .await
        .expect_err("all failed");
        assert_eq!(err.code, "codes-sources-failed");
        assert_eq!(err.exit, exit::FAILURE);
    }
}
