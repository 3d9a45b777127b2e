//! UDIDs: the identifier a phone reports as its USB serial number and lockdown `UniqueDeviceID`.
//!
//! The same phone's UDID reaches the station in several spellings: `CPID-ECID` with a dash
//! from lockdown and usbmuxd, without it or in lower case from MDM inventories and CSV files.
//! Compare UDIDs only through [`normalise_udid`].

/// The canonical form of a UDID for comparison: dashes dropped, ASCII letters upper-cased.
pub fn normalise_udid(udid: &str) -> String {
    udid.chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Whether `a` and `b` name the same phone.
pub fn same_udid(a: &str, b: &str) -> bool {
    normalise_udid(a) == normalise_udid(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_udid_agree() {
        assert_eq!(
            normalise_udid("00008030-001a2b3c4d5e6f70"),
            "00008030001A2B3C4D5E6F70"
        );
        assert!(same_udid(
            "00008030-001A2B3C4D5E6F70",
            "00008030001a2b3c4d5e6f70"
        ));
        assert!(!same_udid(
            "00008030-001A2B3C4D5E6F70",
            "00008030-001A2B3C4D5E6F71"
        ));
    }
}
