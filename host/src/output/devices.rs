//! `station devices` as a table.

use super::aligned_table;
use crate::commands::devices::DeviceRow;

pub fn table(rows: &[DeviceRow]) -> String {
    if rows.is_empty() {
        return "No phones attached.\n".to_string();
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "—".to_string());
    let table: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.udid.clone(),
                dash(&r.serial),
                dash(&r.model),
                dash(&r.product_version),
                dash(&r.activation_state),
                r.connection.clone(),
                r.location.clone(),
                dash(&r.port_path),
                dash(&r.slot),
            ]
        })
        .collect();
    let header = [
        "UDID", "SERIAL", "MODEL", "iOS", "STATE", "CONN", "LOCATION", "PORT", "SLOT",
    ];
    let mut out = aligned_table(header, &table);
    for r in rows {
        if let Some(note) = &r.note {
            out.push_str(&format!("note {}: {note}\n", r.udid));
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
