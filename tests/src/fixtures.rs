//! What the end-to-end tests share: the bypass codes their worlds hold and the phones those
//! worlds are made of. Every phone gets a name (its `device_name`), so a test picks it by
//! name (`InProcBench::udid("mdm")`), never by its position in the world.

/// Bypass codes in Apple's format, all different. Each test gives them roles of its own
/// (`const GOOD: &str = CODE_A;`); the worlds below hold them.
pub const CODE_A: &str = "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4";
/// [`CODE_A`] as the station shows it masked.
pub const CODE_A_MASKED: &str = "3UM43-…-FKA4";
pub const CODE_B: &str = "8LNYD-DVNKU-GYRC-E6GU-3YFD-CT86";
pub const CODE_C: &str = "TF27L-31WN1-E6FH-DMAM-52X5-NFV0";
pub const CODE_D: &str = "J4DNT-6VT2Y-3LD8-1VV7-AT3U-LW17";
pub const CODE_E: &str = "D08HY-EJDEX-X91Q-8YYA-25YD-K857";
pub const CODE_F: &str = "PXH8M-QYJZA-2H1J-H9CV-HN5U-KDN7";

/// Keys every libimobiledevice-compatible pair record carries after a successful `Pair`.
pub const PAIR_RECORD_KEYS: &[&str] = &[
    "HostID",
    "SystemBUID",
    "HostCertificate",
    "HostPrivateKey",
    "RootCertificate",
    "RootPrivateKey",
    "DeviceCertificate",
    "EscrowBag",
    "WiFiMACAddress",
];

/// A world file (TOML): `seed` and its phones, in this order.
pub fn world(seed: u64, phones: &[Phone]) -> String {
    world_with(seed, "", phones)
}

/// Like [`world`], with `sections` (TOML tables such as `[activation_server]`) before the
/// phones.
pub fn world_with(seed: u64, sections: &str, phones: &[Phone]) -> String {
    let mut text = format!("seed = {seed}\n");
    if !sections.is_empty() {
        text.push('\n');
        text.push_str(sections.trim_end());
        text.push('\n');
    }
    for phone in phones {
        text.push_str("\n[[device]]\n");
        text.push_str(&phone.toml);
    }
    text
}

/// One `[[device]]` of a world, named so tests find it by name.
#[derive(Debug, Clone)]
pub struct Phone {
    toml: String,
}

impl Phone {
    /// A phone with only its name set: the world's defaults decide the rest.
    pub fn named(name: &str) -> Phone {
        Phone {
            toml: format!("device_name = {}\n", toml_string(name)),
        }
    }

    /// At Setup Assistant, not Activation Locked.
    pub fn unactivated(name: &str) -> Phone {
        Phone::named(name).with("activation_state", "\"Unactivated\"")
    }

    /// Already activated.
    pub fn activated(name: &str) -> Phone {
        Phone::named(name).with("activation_state", "\"Activated\"")
    }

    /// Locked to a person's Apple Account: no bypass code releases it.
    pub fn user_locked(name: &str) -> Phone {
        Phone::named(name).with("lock", "\"user\"")
    }

    /// Locked by the MDM, which holds `codes` for it.
    pub fn mdm_locked(name: &str, codes: &[&str]) -> Phone {
        Phone::named(name)
            .with("lock", "\"mdm\"")
            .with("codes", &toml_list(codes))
    }

    /// Sets one more world knob; `value` is TOML (`"\"tls1.0\""`, `"true"`, [`toml_list`]).
    pub fn with(mut self, key: &str, value: &str) -> Phone {
        self.toml.push_str(&format!("{key} = {value}\n"));
        self
    }
}

/// `items` as a TOML array of strings.
pub fn toml_list(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|s| toml_string(s)).collect();
    format!("[{}]", items.join(", "))
}

fn toml_string(text: &str) -> String {
    format!("{text:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_reads_back_with_its_named_phones() {
        let text = world(
            7,
            &[
                Phone::unactivated("clean"),
                Phone::mdm_locked("mdm", &[CODE_A]).with("stale_codes", &toml_list(&[CODE_C])),
            ],
        );
        let world = station_sim::World::from_toml(&text, "fixture").expect("a valid world");
        assert_eq!(world.seed, 7);
        assert_eq!(world.devices.len(), 2);
        assert_eq!(world.devices[0].device_name.as_deref(), Some("clean"));
        assert!(text.contains(&format!("codes = [\"{CODE_A}\"]")), "{text}");
        assert!(
            text.contains(&format!("stale_codes = [\"{CODE_C}\"]")),
            "{text}"
        );
    }
}
