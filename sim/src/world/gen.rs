//! Seeded generators for realistic identities: UDIDs, serials, IMEIs, MAC addresses.
//!
//! Every generator takes the caller's RNG so a world is a pure function of its seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::catalog::{Model, SerialStyle};

/// Characters Apple uses in serial numbers: no vowels, so no O/0 or I/1 confusion.
const SERIAL_CHARS: &[u8] = b"0123456789BCDFGHJKLMNPQRSTVWXYZ";
/// Factory codes seen at the start of legacy serials.
const FACTORIES: &[&str] = &[
    "F2L", "DNP", "C39", "FK1", "G6T", "DX3", "F17", "GHK", "C8Q",
];
/// Week codes (5th character of a legacy serial).
const WEEK_CHARS: &[u8] = b"123456789CDFGHJKLMNPQRTVWXY";
/// Organisationally unique identifiers registered to Apple.
const APPLE_OUIS: &[[u8; 3]] = &[
    [0xf0, 0x99, 0xb6],
    [0xa4, 0xc3, 0xf0],
    [0x3c, 0x22, 0xfb],
    [0xbc, 0xd0, 0x74],
    [0x60, 0x8c, 0x4a],
    [0x88, 0x66, 0xa5],
];

/// The RNG for device `index` of a world: independent per device, so device `i` is the same
/// whether the world has 3 or 64 devices.
pub fn device_rng(seed: u64, index: usize) -> StdRng {
    let mixed = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
        .rotate_left(17)
        ^ 0x5EED_0F51_75B0_A7C3;
    StdRng::seed_from_u64(mixed)
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn random_chars(rng: &mut StdRng, alphabet: &[u8], n: usize) -> String {
    (0..n).map(|_| char::from(pick(rng, alphabet))).collect()
}

/// An ECID: 52 to 54 significant bits, as real ones (`0x001A2C3E0E90802E`).
pub fn ecid(rng: &mut StdRng) -> u64 {
    (rng.random::<u64>() & 0x003F_FFFF_FFFF_FFFF) | 0x0010_0000_0000_0000
}

/// The UDID of a model: 40 lower-case hex digits before the A12, `CPID-ECID` after.
pub fn udid(model: &Model, ecid: u64, rng: &mut StdRng) -> String {
    if model.legacy_udid {
        random_chars(rng, b"0123456789abcdef", 40)
    } else {
        format!("{:08X}-{:016X}", model.chip_id, ecid)
    }
}

/// The ECID embedded in a `CPID-ECID` UDID.
pub fn ecid_from_udid(udid: &str) -> Option<u64> {
    let (cpid, ecid) = udid.split_once('-')?;
    if cpid.len() != 8 || ecid.len() != 16 {
        return None;
    }
    u64::from_str_radix(ecid, 16).ok()
}

pub fn serial(model: &Model, rng: &mut StdRng) -> String {
    match model.serial_style {
        SerialStyle::Legacy => {
            let years = model.serial_year_codes.as_bytes();
            format!(
                "{}{}{}{}{}",
                pick(rng, FACTORIES),
                char::from(pick(rng, years)),
                char::from(pick(rng, WEEK_CHARS)),
                random_chars(rng, SERIAL_CHARS, 3),
                model.serial_config_code
            )
        }
        SerialStyle::Randomized => {
            // Randomized serials start with a letter.
            let first = random_chars(rng, &SERIAL_CHARS[10..], 1);
            first + &random_chars(rng, SERIAL_CHARS, 9)
        }
    }
}

/// Luhn check digit for a string of decimal digits.
pub fn luhn_check_digit(digits: &str) -> Option<u8> {
    let mut sum = 0u32;
    for (i, c) in digits.bytes().rev().enumerate() {
        if !c.is_ascii_digit() {
            return None;
        }
        let mut d = u32::from(c - b'0');
        // The digit next to the check digit is doubled, and every second one from there.
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    Some(((10 - sum % 10) % 10) as u8)
}

/// Whether `imei` is 15 digits with a valid Luhn check digit.
pub fn imei_is_valid(imei: &str) -> bool {
    imei.len() == 15
        && imei.bytes().all(|b| b.is_ascii_digit())
        && luhn_check_digit(&imei[..14]) == Some(imei.as_bytes()[14] - b'0')
}

/// An IMEI with the model's TAC, a random serial part and a valid check digit.
pub fn imei(tac: &str, rng: &mut StdRng) -> String {
    let body = format!("{tac}{}", random_chars(rng, b"0123456789", 6));
    let check = luhn_check_digit(&body).unwrap_or(0);
    format!("{body}{check}")
}

/// A lower-case colon-separated MAC address with an Apple OUI.
pub fn mac(rng: &mut StdRng) -> [u8; 6] {
    let oui = pick(rng, APPLE_OUIS);
    [
        oui[0],
        oui[1],
        oui[2],
        rng.random(),
        rng.random(),
        rng.random(),
    ]
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The address after `mac` (Bluetooth is the Wi-Fi address + 1 on iPhones).
pub fn next_mac(mac: [u8; 6], step: u8) -> [u8; 6] {
    let mut out = mac;
    out[5] = out[5].wrapping_add(step);
    out
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut out {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// An Activation Lock bypass code in display form, from 16 drawn bytes as an MDM makes one.
pub fn bypass_code(rng: &mut StdRng) -> String {
    let mut raw = [0u8; 16];
    rng.fill(&mut raw);
    station_protocol::bypass_code::BypassCode::from_raw(&raw).reveal()
}

/// A logic-board serial (17 characters).
pub fn mlb_serial(rng: &mut StdRng) -> String {
    random_chars(rng, SERIAL_CHARS, 17)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::catalog::{self, MODELS};

    #[test]
    fn luhn_matches_known_imeis() {
        // Textbook example: 49015420323751 → check digit 8.
        assert_eq!(luhn_check_digit("49015420323751"), Some(8));
        assert!(imei_is_valid("490154203237518"));
        assert!(!imei_is_valid("490154203237517"));
        assert!(!imei_is_valid("49015420323751"));
        assert!(!imei_is_valid("49015420323751x"));
        assert_eq!(luhn_check_digit("12a"), None);
    }

    #[test]
    fn generated_imeis_are_valid() {
        let mut rng = device_rng(1, 0);
        for m in MODELS {
            for _ in 0..50 {
                let imei = imei(m.imei_tac, &mut rng);
                assert!(imei_is_valid(&imei), "{imei}");
                assert!(imei.starts_with(m.imei_tac));
            }
        }
    }

    #[test]
    fn udid_forms() {
        let mut rng = device_rng(2, 0);
        let old = catalog::model("iPhone10,4").expect("model");
        let u = udid(old, ecid(&mut rng), &mut rng);
        assert_eq!(u.len(), 40);
        assert!(u
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));

        let new = catalog::model("iPhone12,1").expect("model");
        let e = ecid(&mut rng);
        let u = udid(new, e, &mut rng);
        assert_eq!(u.len(), 25);
        assert!(u.starts_with("00008030-"), "{u}");
        assert_eq!(ecid_from_udid(&u), Some(e));
        assert!(u[9..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase()));
    }

    #[test]
    fn serial_forms() {
        let mut rng = device_rng(3, 0);
        for m in MODELS {
            for _ in 0..20 {
                let s = serial(m, &mut rng);
                let expected = match m.serial_style {
                    SerialStyle::Legacy => 12,
                    SerialStyle::Randomized => 10,
                };
                assert_eq!(s.len(), expected, "{s} for {}", m.product_type);
                assert!(!s.contains(['O', 'I', 'A', 'E', 'U']), "{s}");
                assert!(s
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
            }
        }
    }

    #[test]
    fn macs_round_trip() {
        let mut rng = device_rng(4, 0);
        let m = mac(&mut rng);
        let text = format_mac(m);
        assert_eq!(text.len(), 17);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(parse_mac(&text), Some(m));
        assert_eq!(parse_mac("zz:00:00:00:00:00"), None);
        assert_eq!(parse_mac("00:00:00:00:00"), None);
        assert_eq!(parse_mac("00:00:00:00:00:00:00"), None);
        assert_eq!(next_mac([0, 0, 0, 0, 0, 0xff], 1)[5], 0);
    }

    #[test]
    fn rng_is_per_device_and_seeded() {
        let a: u64 = device_rng(7, 3).random();
        let b: u64 = device_rng(7, 3).random();
        let c: u64 = device_rng(7, 4).random();
        let d: u64 = device_rng(8, 3).random();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}
