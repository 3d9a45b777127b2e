//! `station config check` as text.

use crate::commands::config::ConfigCheck;

pub fn text(s: &ConfigCheck) -> String {
    let mut out = String::new();
    let name = s
        .file
        .as_deref()
        .unwrap_or("defaults (no configuration file found)");
    out.push_str(&if s.usable {
        format!("{name}: valid\n")
    } else {
        format!("{name}: `station run` would refuse it\n")
    });
    out.push_str(&format!(
        "station {} keeps its ledger in {}, works on up to {} phones at once\n",
        s.station_id, s.data_dir, s.concurrency
    ));
    out.push_str(&format!(
        "usbmuxd at {}; pair records {}\n",
        s.usbmuxd, s.pair_records
    ));
    out.push_str(&format!("activation server {}\n", s.activation_url));
    out.push_str(&format!("{} slot label(s)\n", s.slots));
    let p = &s.preflight;
    if p.sources.is_empty() {
        out.push_str("no bypass-code source: Activation-Locked phones end locked_no_code\n");
    }
    for (i, source) in p.sources.iter().enumerate() {
        out.push_str(&format!(
            "code source {}: {} ({}): {}\n",
            i + 1,
            source.name,
            source.r#type,
            source.detail
        ));
        if let Some(problem) = &source.problem {
            out.push_str(&format!("  problem: {problem}\n"));
        }
    }
    if let Some(fleet) = &s.fleet {
        out.push_str(&format!(
            "fleet database {} ({}), as station {}\n",
            fleet.database,
            if fleet.tls { "TLS" } else { "no TLS" },
            fleet.station_id
        ));
        if let Some(version) = &fleet.server_version {
            out.push_str(&format!("  PostgreSQL {version}\n"));
        }
        match (fleet.schema_version, &fleet.error) {
            (_, Some(error)) => out.push_str(&format!(
                "  error: {error} (the line still runs; attempts wait in the outbox)\n"
            )),
            (None, None) => out.push_str(&format!(
                "  no station schema yet: the first station creates it (version {})\n",
                fleet.schema_supported
            )),
            (Some(found), None) => out.push_str(&format!(
                "  schema version {found} (this station writes {})\n",
                fleet.schema_supported
            )),
        }
    }
    for warning in &p.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out
}
