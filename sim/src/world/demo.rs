//! The world of `station demo`: a realistic mix of phones, cycled for larger benches.
//! It lives here so that tests can rebuild the same phones (and their codes) from a seed.

use std::fmt::Write as _;

use station_protocol::bypass_code::BypassCode;

/// What each phone of the demo is, cycling for larger benches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Clean,
    IntuneCode,
    StaleCodeOnly,
    UserLocked,
    Activated,
    TrustPending,
    TwoRecords,
    /// Pulled out mid-run and plugged back (only the first one of its kind).
    Unplugged,
}

const MIX: [Kind; 8] = [
    Kind::Clean,
    Kind::IntuneCode,
    Kind::StaleCodeOnly,
    Kind::UserLocked,
    Kind::Activated,
    Kind::TrustPending,
    Kind::TwoRecords,
    Kind::Unplugged,
];

/// Deterministic bypass codes for the bench's test data (splitmix64).
struct Codes(u64);

impl Codes {
    fn next(&mut self) -> String {
        let mut raw = [0u8; 16];
        for chunk in raw.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            chunk.copy_from_slice(&(z ^ (z >> 31)).to_be_bytes());
        }
        BypassCode::from_raw(&raw).reveal()
    }
}

pub fn kinds(devices: usize) -> Vec<Kind> {
    (0..devices)
        .map(|i| match MIX[i % MIX.len()] {
            Kind::Unplugged if i >= MIX.len() => Kind::Clean,
            kind => kind,
        })
        .collect()
}

/// The demo bench's world file (TOML) for `devices` phones.
pub fn world_toml(devices: usize, seed: u64, latency_ms: u64) -> String {
    let kinds = kinds(devices);
    let mut codes = Codes(seed);
    let mut text = format!(
        "seed = {seed}\n\n[activation_server]\nlatency_ms = {latency_ms}\n\n[intune.graph]\nlatency_ms = {}\n",
        latency_ms / 2
    );
    for kind in &kinds {
        text.push_str("\n[[device]]\n");
        let _ = match kind {
            Kind::Clean | Kind::Unplugged => writeln!(text, "activation_state = \"Unactivated\""),
            Kind::IntuneCode => writeln!(text, "lock = \"mdm\"\ncodes = [\"{}\"]", codes.next()),
            Kind::StaleCodeOnly => {
                // Intune only still holds a superseded code: Apple rejects it.
                let (good, stale) = (codes.next(), codes.next());
                writeln!(
                    text,
                    "lock = \"mdm\"\ncodes = [\"{good}\"]\nstale_codes = [\"{stale}\"]\n[[device.enrollments]]\nmdm = \"intune\"\ncode = \"{stale}\"\nudid = true"
                )
            }
            Kind::UserLocked => writeln!(text, "lock = \"user\""),
            // Still signed in to its owner's Find My.
            Kind::Activated => writeln!(text, "activation_state = \"Activated\"\nfind_my = true"),
            // Still supervised by and enrolled in its former organisation.
            Kind::TrustPending => writeln!(
                text,
                "activation_state = \"Activated\"\ntrust = \"accept\"\ntrust_delay_ms = 2500\nsupervised = true\norganization = \"{}\"\nconfiguration_url = \"{}\"\nmdm_unremovable = true",
                crate::world::DEFAULT_ORGANIZATION,
                crate::world::DEFAULT_CONFIGURATION_URL
            ),
            Kind::TwoRecords => {
                let (good, stale) = (codes.next(), codes.next());
                writeln!(
                    text,
                    "lock = \"mdm\"\ncodes = [\"{good}\"]\nstale_codes = [\"{stale}\"]"
                )
            }
        };
    }
    text
}

/// Which phone the demo pulls out mid-run and plugs back in.
pub fn unplugged_index(devices: usize) -> Option<usize> {
    kinds(devices).iter().position(|k| *k == Kind::Unplugged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::World;

    #[test]
    fn the_mix_repeats_with_one_unplugged_phone() {
        let k = kinds(20);
        assert_eq!(&k[..8], &MIX);
        assert_eq!(k.iter().filter(|k| **k == Kind::Unplugged).count(), 1);
        assert_eq!(
            kinds(3),
            vec![Kind::Clean, Kind::IntuneCode, Kind::StaleCodeOnly]
        );
        assert_eq!(unplugged_index(8), Some(7));
        assert_eq!(unplugged_index(5), None);
    }

    #[test]
    fn the_demo_has_a_find_my_phone_and_a_supervised_one() {
        let phones = World::from_toml(&world_toml(8, 7, 100), "demo")
            .expect("valid world")
            .resolve()
            .expect("resolves");
        let find_my: Vec<usize> = (0..8).filter(|&i| phones[i].find_my).collect();
        assert_eq!(find_my, vec![4]);
        let supervised: Vec<usize> = (0..8)
            .filter(|&i| {
                phones[i]
                    .cloud_configuration
                    .as_ref()
                    .is_some_and(|c| c.supervised)
            })
            .collect();
        assert_eq!(supervised, vec![5]);
    }

    #[test]
    fn the_demo_world_is_valid_for_every_size() {
        for n in [1, 4, 8, 17] {
            let world = World::from_toml(&world_toml(n, 7, 100), "demo").expect("valid world");
            assert_eq!(world.resolve().expect("resolves").len(), n);
        }
    }
}
