//! `station devices` as a table.

use super::aligned_table;
use crate::commands::devices::DeviceRow;
use crate::lockstate::{yes_no, ManagementState};

pub fn table(rows: &[DeviceRow]) -> String {
    if rows.is_empty() {
        return "No phones attached.\n".to_string();
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "—".to_string());
    let table: Vec<[String; 12]> = rows
        .iter()
        .map(|r| {
            [
                r.udid.clone(),
                dash(&r.serial),
                dash(&r.model),
                dash(&r.product_version),
                dash(&r.activation_state),
                yes_no(r.management.find_my),
                yes_no(r.management.passcode_set),
                supervised_cell(&r.management),
                r.connection.clone(),
                r.location.clone(),
                dash(&r.port_path),
                dash(&r.slot),
            ]
        })
        .collect();
    let header = [
        "UDID",
        "SERIAL",
        "MODEL",
        "iOS",
        "STATE",
        "FIND MY",
        "PASSCODE",
        "SUPERVISED",
        "CONN",
        "LOCATION",
        "PORT",
        "SLOT",
    ];
    let mut out = aligned_table(header, &table);
    for r in rows {
        if let Some(note) = &r.note {
            out.push_str(&format!("note {}: {note}\n", r.udid));
        }
        if r.management.passcode_set == Some(true) {
            out.push_str(&format!(
                "note {}: a passcode is set: the phone shows the Trust prompt only when unlocked\n",
                r.udid
            ));
        }
    }
    if rows.iter().any(|r| r.port_path.is_none()) {
        out.push_str(
            "PORT —: no USB device on this machine has that UDID as its serial (virtual bench, or usbmuxd on another host); \
             those phones' slots are known by LOCATION only, which changes when a phone is replugged\n",
        );
    }
    out
}

/// The organisation of a supervised phone, `yes` when it has none, `no`, or `—`.
pub(super) fn supervised_cell(state: &ManagementState) -> String {
    match (state.supervised, &state.organization) {
        (Some(true), Some(org)) => org.clone(),
        (supervised, _) => yes_no(supervised),
    }
}

/// `station info --summary`: one `name: value` line per field.
pub fn summary(row: &DeviceRow) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "—".to_string());
    let m = &row.management;
    let lines = [
        ("udid", row.udid.clone()),
        ("serial", dash(&row.serial)),
        ("model", dash(&row.model)),
        ("product_version", dash(&row.product_version)),
        ("activation_state", dash(&row.activation_state)),
        ("find_my", yes_no(m.find_my)),
        ("passcode_set", yes_no(m.passcode_set)),
        ("supervised", yes_no(m.supervised)),
        ("organization", dash(&m.organization)),
        ("mdm_enrolled", yes_no(m.mdm_enrolled)),
        ("mdm_unremovable", yes_no(m.mdm_unremovable)),
        (
            "activation_lock",
            row.activation_lock
                .as_ref()
                .map_or_else(|| "—".to_string(), |l| l.describe()),
        ),
        ("badges", m.badges().join(" ")),
    ];
    let mut out: String = lines
        .iter()
        .map(|(name, value)| format!("{name}: {value}\n"))
        .collect();
    if let Some(note) = &row.note {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::SlotBy;

    fn row(udid: &str, management: ManagementState) -> DeviceRow {
        DeviceRow {
            udid: udid.into(),
            serial: Some(format!("S-{udid}")),
            product_type: None,
            model: None,
            product_version: None,
            build_version: None,
            device_name: None,
            activation_state: Some("Activated".into()),
            management,
            activation_lock: None,
            paired: true,
            connection: "USB".into(),
            location: "0x00010002".into(),
            port_path: Some("1-1".into()),
            slot: None,
            slot_by: SlotBy::PortPath,
            device_id: 1,
            note: None,
        }
    }

    #[test]
    fn the_table_shows_find_my_passcode_and_the_organisation() {
        let rows = [
            row(
                "A",
                ManagementState {
                    find_my: Some(true),
                    passcode_set: Some(true),
                    ..ManagementState::default()
                },
            ),
            row(
                "B",
                ManagementState {
                    find_my: Some(false),
                    supervised: Some(true),
                    organization: Some("Acme".into()),
                    ..ManagementState::default()
                },
            ),
            row("C", ManagementState::default()),
        ];
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("FIND MY")
                && lines[0].contains("PASSCODE")
                && lines[0].contains("SUPERVISED"),
            "{text}"
        );
        let cells = |udid: &str| -> Vec<String> {
            let line = lines
                .iter()
                .find(|l| l.starts_with(udid))
                .unwrap_or_else(|| panic!("{udid}: {text}"));
            line.split_whitespace().map(str::to_string).collect()
        };
        assert_eq!(cells("A")[5..8], ["yes", "yes", "—"], "{text}");
        assert_eq!(cells("B")[5..8], ["no", "—", "Acme"], "{text}");
        assert_eq!(cells("C")[5..8], ["—", "—", "—"], "{text}");
        assert!(text.contains("note A: a passcode is set"), "{text}");
        let summary = summary(&rows[1]);
        assert!(summary.contains("organization: Acme\n"), "{summary}");
        assert!(summary.contains("find_my: no\n"), "{summary}");
        assert!(summary.contains("badges: SUPERVISED:Acme\n"), "{summary}");
    }
}
