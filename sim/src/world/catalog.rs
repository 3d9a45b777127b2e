//! Real iPhone models the generator draws from.
//!
//! ProductType / HardwareModel / chip (CPID) / board pairs are Apple's; the per-model
//! ModelNumber, RegulatoryModelNumber and IMEI TAC are plausible values in the right format
//! (a virtual phone only has to look like a real one to the tools that read it).
//!
//! [`MODELS`] is what generated worlds draw from: phones on iOS 12 or later, which speak TLS
//! 1.2 with the station. [`OLDER_MODELS`] (iPhone 6s, iPhone 7) are there for world files that
//! pin them, down to the iOS they shipped with; they are never drawn, so a generated world
//! stays modern and its seeds keep producing the same phones.

/// How the serial number of a model is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialStyle {
    /// 12 characters: factory, year, week, unit, model code (devices made before 2021).
    Legacy,
    /// 10 random characters (Apple's scheme since 2021).
    Randomized,
}

/// One iOS release: ProductVersion and its BuildVersion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OsRelease {
    pub version: &'static str,
    pub build: &'static str,
}

/// A model of iPhone as lockdown describes it.
#[derive(Debug, Clone, Copy)]
pub struct Model {
    pub product_type: &'static str,
    pub hardware_model: &'static str,
    /// Chip id (CPID); also the first half of the UDID from the A12 on.
    pub chip_id: u32,
    pub board_id: u32,
    pub hardware_platform: &'static str,
    pub cpu_architecture: &'static str,
    /// Legacy models (before the A12) have a 40-hex-digit UDID instead of `CPID-ECID`.
    pub legacy_udid: bool,
    pub serial_style: SerialStyle,
    /// Last 4 characters of a legacy serial (the model/colour/capacity code).
    pub serial_config_code: &'static str,
    /// First 8 digits of the IMEI (type allocation code).
    pub imei_tac: &'static str,
    /// Two IMEIs (physical SIM + eSIM).
    pub dual_imei: bool,
    pub model_numbers: &'static [&'static str],
    pub regulatory_model_number: &'static str,
    pub storage_gb: &'static [u32],
    /// Releases this model can run, oldest first.
    pub releases: &'static [OsRelease],
    /// Year codes (4th serial character) for when the model was built.
    pub serial_year_codes: &'static str,
}

const IOS16: &[OsRelease] = &[
    OsRelease {
        version: "16.7.8",
        build: "20H343",
    },
    OsRelease {
        version: "16.7.10",
        build: "20H350",
    },
];

const IOS17_18: &[OsRelease] = &[
    OsRelease {
        version: "17.6.1",
        build: "21G93",
    },
    OsRelease {
        version: "17.7",
        build: "21H16",
    },
    OsRelease {
        version: "18.5",
        build: "22F76",
    },
    OsRelease {
        version: "18.6",
        build: "22G86",
    },
    OsRelease {
        version: "18.6.2",
        build: "22G100",
    },
];

const IOS18: &[OsRelease] = &[
    OsRelease {
        version: "18.5",
        build: "22F76",
    },
    OsRelease {
        version: "18.6",
        build: "22G86",
    },
    OsRelease {
        version: "18.6.2",
        build: "22G100",
    },
];

/// iPhone 6s (shipped with iOS 9.0) and iPhone 7 (iOS 10.0) up to iOS 15, their last.
const IOS9_TO_15: &[OsRelease] = &[
    OsRelease {
        version: "9.3.5",
        build: "13G36",
    },
    OsRelease {
        version: "10.3.3",
        build: "14G60",
    },
    OsRelease {
        version: "11.4.1",
        build: "15G77",
    },
    OsRelease {
        version: "12.4.1",
        build: "16G102",
    },
    OsRelease {
        version: "15.8",
        build: "19H370",
    },
    OsRelease {
        version: "15.8.1",
        build: "19H380",
    },
];

const IOS10_TO_15: &[OsRelease] = IOS9_TO_15.split_at(1).1;

/// Models a world file may name but generated worlds never draw (see the module docs).
/// ProductType, HardwareModel and CPID are Apple's; board ids as The iPhone Wiki lists them.
pub const OLDER_MODELS: &[Model] = &[
    Model {
        product_type: "iPhone8,1",
        // The Samsung-A9 board; the TSMC one is N71mAP (CPID 0x8003), same ProductType.
        hardware_model: "N71AP",
        chip_id: 0x8000,
        board_id: 0x04,
        hardware_platform: "s8000",
        cpu_architecture: "arm64",
        legacy_udid: true,
        serial_style: SerialStyle::Legacy,
        serial_config_code: "GRY5",
        imei_tac: "35325807",
        dual_imei: false,
        model_numbers: &["MKQJ2", "MKQK2", "MKQL2"],
        regulatory_model_number: "A1688",
        storage_gb: &[16, 64, 128],
        releases: IOS9_TO_15,
        serial_year_codes: "DFGH",
    },
    Model {
        product_type: "iPhone9,1",
        hardware_model: "D10AP",
        chip_id: 0x8010,
        board_id: 0x08,
        hardware_platform: "t8010",
        cpu_architecture: "arm64",
        legacy_udid: true,
        serial_style: SerialStyle::Legacy,
        serial_config_code: "HG7F",
        imei_tac: "35533608",
        dual_imei: false,
        model_numbers: &["MN8G2", "MN8J2", "MN8L2"],
        regulatory_model_number: "A1660",
        storage_gb: &[32, 128, 256],
        releases: IOS10_TO_15,
        serial_year_codes: "FGHJ",
    },
    Model {
        product_type: "iPhone9,3",
        hardware_model: "D101AP",
        chip_id: 0x8010,
        board_id: 0x0c,
        hardware_platform: "t8010",
        cpu_architecture: "arm64",
        legacy_udid: true,
        serial_style: SerialStyle::Legacy,
        serial_config_code: "HG7H",
        imei_tac: "35533708",
        dual_imei: false,
        model_numbers: &["MN8H2", "MN8K2", "MN8Q2"],
        regulatory_model_number: "A1778",
        storage_gb: &[32, 128, 256],
        releases: IOS10_TO_15,
        serial_year_codes: "FGHJ",
    },
];

pub const MODELS: &[Model] = &[
    Model {
        product_type: "iPhone10,4",
        hardware_model: "D201AP",
        chip_id: 0x8015,
        board_id: 0x0a,
        hardware_platform: "t8015",
        cpu_architecture: "arm64",
        legacy_udid: true,
        serial_style: SerialStyle::Legacy,
        serial_config_code: "JC67",
        imei_tac: "35299209",
        dual_imei: false,
        model_numbers: &["MQ6K2", "MQ6L2", "MQ6M2"],
        regulatory_model_number: "A1905",
        storage_gb: &[64, 256],
        releases: IOS16,
        serial_year_codes: "HJKL",
    },
    Model {
        product_type: "iPhone11,8",
        hardware_model: "N841AP",
        chip_id: 0x8020,
        board_id: 0x0c,
        hardware_platform: "t8020",
        cpu_architecture: "arm64e",
        legacy_udid: false,
        serial_style: SerialStyle::Legacy,
        serial_config_code: "KXKN",
        imei_tac: "35730710",
        dual_imei: true,
        model_numbers: &["MRY42", "MRY52", "MT0G2"],
        regulatory_model_number: "A1984",
        storage_gb: &[64, 128],
        releases: IOS17_18,
        serial_year_codes: "JKLM",
    },
    Model {
        product_type: "iPhone12,1",
        hardware_model: "N104AP",
        chip_id: 0x8030,
        board_id: 0x04,
        hardware_platform: "t8030",
        cpu_architecture: "arm64e",
        legacy_udid: false,
        serial_style: SerialStyle::Legacy,
        serial_config_code: "N72J",
        imei_tac: "35391110",
        dual_imei: true,
        model_numbers: &["MWL72", "MWLT2", "MHDA3"],
        regulatory_model_number: "A2111",
        storage_gb: &[64, 128, 256],
        releases: IOS17_18,
        serial_year_codes: "LMNP",
    },
    Model {
        product_type: "iPhone13,2",
        hardware_model: "D53gAP",
        chip_id: 0x8101,
        board_id: 0x0c,
        hardware_platform: "t8101",
        cpu_architecture: "arm64e",
        legacy_udid: false,
        serial_style: SerialStyle::Legacy,
        serial_config_code: "0DXR",
        imei_tac: "35297211",
        dual_imei: true,
        model_numbers: &["MGJ53", "MGJ93", "MGJE3"],
        regulatory_model_number: "A2172",
        storage_gb: &[64, 128, 256],
        releases: IOS17_18,
        serial_year_codes: "NPQR",
    },
    Model {
        product_type: "iPhone14,5",
        hardware_model: "D63AP",
        chip_id: 0x8110,
        board_id: 0x0e,
        hardware_platform: "t8110",
        cpu_architecture: "arm64e",
        legacy_udid: false,
        serial_style: SerialStyle::Randomized,
        serial_config_code: "",
        imei_tac: "35065332",
        dual_imei: true,
        model_numbers: &["MLMT3", "MLPF3", "MLPG3"],
        regulatory_model_number: "A2482",
        storage_gb: &[128, 256, 512],
        releases: IOS17_18,
        serial_year_codes: "",
    },
    Model {
        product_type: "iPhone15,2",
        hardware_model: "D73AP",
        chip_id: 0x8120,
        board_id: 0x0c,
        hardware_platform: "t8120",
        cpu_architecture: "arm64e",
        legacy_udid: false,
        serial_style: SerialStyle::Randomized,
        serial_config_code: "",
        imei_tac: "35067419",
        dual_imei: true,
        model_numbers: &["MQ0G3", "MPXT3", "MQ1E3"],
        regulatory_model_number: "A2650",
        storage_gb: &[128, 256, 512, 1024],
        releases: IOS17_18,
        serial_year_codes: "",
    },
    Model {
        product_type: "iPhone16,1",
        hardware_model: "D83AP",
        chip_id: 0x8130,
        board_id: 0x04,
        hardware_platform: "t8130",
        cpu_architecture: "arm64e",
        legacy_udid: false,
        serial_style: SerialStyle::Randomized,
        serial_config_code: "",
        imei_tac: "35016436",
        dual_imei: true,
        model_numbers: &["MTUV3", "MTUX3", "MTV03"],
        regulatory_model_number: "A2848",
        storage_gb: &[128, 256, 512, 1024],
        releases: IOS17_18,
        serial_year_codes: "",
    },
    Model {
        product_type: "iPhone17,3",
        hardware_model: "D47AP",
        chip_id: 0x8140,
        board_id: 0x0c,
        hardware_platform: "t8140",
        cpu_architecture: "arm64e",
        legacy_udid: false,
        serial_style: SerialStyle::Randomized,
        serial_config_code: "",
        imei_tac: "35042758",
        dual_imei: true,
        model_numbers: &["MYE73", "MYEA3", "MYED3"],
        regulatory_model_number: "A3081",
        storage_gb: &[128, 256, 512],
        releases: IOS18,
        serial_year_codes: "",
    },
];

fn all_models() -> impl Iterator<Item = &'static Model> {
    OLDER_MODELS.iter().chain(MODELS)
}

/// The catalogue entry for `product_type`, if it is one we know.
pub fn model(product_type: &str) -> Option<&'static Model> {
    all_models().find(|m| m.product_type == product_type)
}

/// All product types, for error messages.
pub fn product_types() -> Vec<&'static str> {
    all_models().map(|m| m.product_type).collect()
}

impl Model {
    /// The name MDM inventories show ("iPhone 11"), from the one table in
    /// `station_protocol::models`; every catalogue model is in it (tested below).
    pub fn marketing_name(&self) -> &'static str {
        station_protocol::models::marketing_name(self.product_type).unwrap_or(self.product_type)
    }

    /// The release with this ProductVersion, if the model runs it.
    pub fn release(&self, version: &str) -> Option<&'static OsRelease> {
        self.releases.iter().find(|r| r.version == version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_is_consistent() {
        for m in all_models() {
            assert!(!m.releases.is_empty(), "{} has no release", m.product_type);
            assert_eq!(m.imei_tac.len(), 8, "{}", m.product_type);
            assert!(m.imei_tac.bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(m.legacy_udid, m.chip_id < 0x8020, "{}", m.product_type);
            if m.serial_style == SerialStyle::Legacy {
                assert_eq!(m.serial_config_code.len(), 4, "{}", m.product_type);
                assert!(!m.serial_year_codes.is_empty(), "{}", m.product_type);
            }
            assert!(model(m.product_type).is_some());
            assert!(
                station_protocol::models::marketing_name(m.product_type).is_some(),
                "{} has no marketing name",
                m.product_type
            );
        }
    }

    #[test]
    fn known_builds() {
        let m = model("iPhone12,1").expect("iPhone 11 in catalogue");
        assert_eq!(m.release("17.7").map(|r| r.build), Some("21H16"));
        assert_eq!(m.release("18.6").map(|r| r.build), Some("22G86"));
        assert!(m.release("9.3").is_none());
        let six_s = model("iPhone8,1").expect("iPhone 6s in catalogue");
        assert_eq!(six_s.release("9.3.5").map(|r| r.build), Some("13G36"));
        assert_eq!(six_s.release("10.3.3").map(|r| r.build), Some("14G60"));
        assert_eq!(six_s.release("11.4.1").map(|r| r.build), Some("15G77"));
        // The iPhone 7 shipped with iOS 10: no iOS 9 for it.
        let seven = model("iPhone9,3").expect("iPhone 7 in catalogue");
        assert!(seven.release("9.3.5").is_none());
        assert_eq!(seven.release("15.8").map(|r| r.build), Some("19H370"));
    }

    #[test]
    fn generated_models_all_run_ios_12_or_later() {
        for m in MODELS {
            for r in m.releases {
                let major: u32 = r
                    .version
                    .split('.')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("numeric major version");
                assert!(major >= 12, "{} {}", m.product_type, r.version);
            }
        }
        for m in OLDER_MODELS {
            assert!(MODELS.iter().all(|g| g.product_type != m.product_type));
        }
    }
}
