//! `station codes lookup`: asks the configured bypass-code sources about one serial number
//! and says which answered, how many codes each gave, and the codes, masked unless the
//! operator asks for them whole (`--reveal`, to type one on the phone).

use serde::Serialize;

use crate::codes::chain::Chain;
use crate::codes::{CodeKind, Lookup};
use crate::error::StationError;
use crate::station::Station;

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
}

/// One configured source in a lookup: its answer or its failure.
#[derive(Debug, Serialize)]
pub struct SourceRow {
    pub source: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A code as shown: masked unless the operator asked for it whole.
#[derive(Debug, Serialize)]
pub struct CodeRow {
    pub code: String,
    pub kind: CodeKind,
    pub source: String,
}

/// What `station codes lookup` found (the JSON shape in [`LOOKUP_HELP`]).
#[derive(Debug, Serialize)]
pub struct CodesLookup {
    pub serial: String,
    pub udid: Option<String>,
    pub known: bool,
    pub revealed: bool,
    pub sources: Vec<SourceRow>,
    pub codes: Vec<CodeRow>,
}

/// Asks every configured source; the codes masked unless `reveal`.
pub async fn lookup(station: &Station, args: LookupArgs<'_>) -> Result<CodesLookup, StationError> {
    let chain = station
        .code_chain()?
        .ok_or(StationError::CodesNotConfigured)?;
    let serial = args.serial.trim();
    let lookup = chain
        .lookup_all(serial, args.udid.unwrap_or_default())
        .await
        .map_err(StationError::CodesSourcesFailed)?;
    Ok(CodesLookup {
        serial: serial.to_string(),
        udid: args.udid.map(str::to_string),
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
                source: c.source.clone(),
            })
            .collect(),
    })
}

/// Every configured source in order: its answer or its failure.
fn source_rows(chain: &Chain, lookup: &Lookup) -> Vec<SourceRow> {
    chain
        .sources()
        .into_iter()
        .map(|(name, kind)| {
            let answered = lookup.answered.iter().find(|a| a.source == name);
            let failed = lookup.failures.iter().find(|f| f.source == name);
            SourceRow {
                source: name.to_string(),
                kind,
                status: if answered.is_some() {
                    "answered"
                } else {
                    "failed"
                },
                known: answered.map(|a| a.known),
                codes: answered.map(|a| a.codes),
                cached: answered.map(|a| a.cached),
                reason: failed.map(|f| f.reason.clone()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{render, Output};
    use crate::station::Options;
    use station_config::StationConfig;

    /// The lookup as the output layer shows it.
    async fn shown(config: &StationConfig, args: LookupArgs<'_>, json: bool) -> String {
        let station = Station::with_config(Options::default(), config.clone());
        let found = lookup(&station, args).await.expect("lookup");
        render(&Output::Codes(found), json).expect("rendered")
    }

    async fn failure(config: StationConfig, args: LookupArgs<'_>) -> StationError {
        let station = Station::with_config(Options::default(), config);
        lookup(&station, args).await.expect_err("fails")
    }

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
        let args = |reveal| LookupArgs {
            serial: "C8TJ500QF1MN",
            udid: None,
            reveal,
        };
        let text = shown(&config, args(false), false).await;
        assert!(text.contains("3UM43-…-FKA4  device   export"), "{text}");
        assert!(
            text.contains("broken-hook (command)  failed: cannot run hook"),
            "{text}"
        );
        assert!(!text.contains("PUYVY"), "{text}");

        let json: serde_json::Value =
            serde_json::from_str(&shown(&config, args(false), true).await).expect("valid json");
        assert_eq!(json["codes"][0]["code"], "3UM43-…-FKA4");
        assert_eq!(json["sources"][0]["status"], "answered");
        assert_eq!(json["sources"][0]["codes"], 1);
        assert_eq!(json["sources"][1]["status"], "failed");
        assert_eq!(json["revealed"], false);

        let revealed = shown(&config, args(true), false).await;
        assert!(
            revealed.contains("3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4"),
            "{revealed}"
        );
    }

    #[tokio::test]
    async fn no_sources_and_all_failed_are_errors() {
        let err = failure(
            StationConfig::default(),
            LookupArgs {
                serial: "S",
                udid: None,
                reveal: false,
            },
        )
        .await;
        assert_eq!(err.code(), "codes-not-configured");

        let dir = tempfile::tempdir().expect("dir");
        let text = format!(
            "[[codes.sources]]\ntype = \"command\"\nprogram = \"{}\"\n",
            dir.path().join("missing").display()
        );
        let config = StationConfig::parse(&text, &dir.path().join("s.toml")).expect("config");
        let err = failure(
            config,
            LookupArgs {
                serial: "S",
                udid: Some("U"),
                reveal: false,
            },
        )
        .await;
        assert_eq!(err.code(), "codes-sources-failed");
        assert_eq!(err.exit_code(), crate::error::exit::FAILURE);
    }
}
