//! Which USB devices are phones and where their mux interface is (docs/protocol.md §2.1,
//! §2.3, §2.9), as pure functions over descriptors already read, so the choice is tested
//! without a bus.

/// Apple's USB vendor id.
pub const APPLE_VENDOR_ID: u16 = 0x05AC;
/// iPhone, iPad and iPod touch running iOS (§2.1; the udev rule's `12[9a][0-9a-f]`).
pub const PHONE_PRODUCT_IDS: std::ops::RangeInclusive<u16> = 0x1290..=0x12AF;
/// The mux interface: vendor class 255, subclass 254, protocol 2 (§2.3).
pub const MUX_CLASS: (u8, u8, u8) = (0xFF, 0xFE, 0x02);

/// §2.2: the vendor request that asks a phone its USB mode (`bmRequestType` 0xC0,
/// `wValue` 0, `wIndex` 0, 4 bytes back).
pub const GET_MODE_REQUEST: u8 = 0x45;
/// The answer's length.
pub const GET_MODE_LENGTH: u16 = 4;

/// What a phone's answer to [`GET_MODE_REQUEST`] says, for the log: `3:3:3:0` is the initial
/// mode 1 (the bench's, §2.2), `5:3:3:0` another one; anything else is shown as it came.
pub fn describe_mode(answer: &[u8]) -> String {
    let bytes: Vec<String> = answer.iter().map(u8::to_string).collect();
    let shown = bytes.join(":");
    match answer {
        [3, 3, 3, 0] => format!("{shown} (initial mode)"),
        [5, 3, 3, 0] => format!("{shown} (not the initial mode)"),
        _ => format!("{shown} (unknown)"),
    }
}

/// Whether vendor and product id are a phone in normal (mux) mode; recovery and DFU ids
/// speak iBoot's protocol and are left alone.
pub fn is_phone(vendor_id: u16, product_id: u16) -> bool {
    vendor_id == APPLE_VENDOR_ID && PHONE_PRODUCT_IDS.contains(&product_id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    Control,
    Isochronous,
    Bulk,
    Interrupt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointDesc {
    pub address: u8,
    pub direction: Direction,
    pub kind: TransferKind,
    pub max_packet_size: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceDesc {
    pub number: u8,
    pub alternate_setting: u8,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    pub endpoints: Vec<EndpointDesc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDesc {
    /// `bConfigurationValue`.
    pub value: u8,
    pub interfaces: Vec<InterfaceDesc>,
}

/// Where the mux is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxChoice {
    pub configuration: u8,
    pub interface: u8,
    pub endpoint_in: u8,
    pub endpoint_out: u8,
    /// `wMaxPacketSize` of the OUT endpoint: decides the zero-length packet (§2.4).
    pub out_max_packet_size: usize,
    /// Every interface of the configuration: their kernel drivers (ipheth, cdc_ncm) must let
    /// go before the configuration changes (§2.3).
    pub interfaces: Vec<u8>,
}

/// §2.3: the highest-numbered configuration down to 1 whose alternate setting 0 of some
/// interface is 255/254/2 with exactly two endpoints, one bulk IN and one bulk OUT.
pub fn choose_mux(configs: &[ConfigDesc]) -> Option<MuxChoice> {
    let mut ordered: Vec<&ConfigDesc> = configs.iter().filter(|c| c.value >= 1).collect();
    ordered.sort_by_key(|c| std::cmp::Reverse(c.value));
    for config in ordered {
        for interface in &config.interfaces {
            if interface.alternate_setting != 0
                || (interface.class, interface.subclass, interface.protocol) != MUX_CLASS
                || interface.endpoints.len() != 2
            {
                continue;
            }
            let bulk = |direction| {
                interface
                    .endpoints
                    .iter()
                    .find(|e| e.direction == direction && e.kind == TransferKind::Bulk)
            };
            if let (Some(ep_in), Some(ep_out)) = (bulk(Direction::In), bulk(Direction::Out)) {
                let mut interfaces: Vec<u8> = config.interfaces.iter().map(|i| i.number).collect();
                interfaces.sort_unstable();
                interfaces.dedup();
                return Some(MuxChoice {
                    configuration: config.value,
                    interface: interface.number,
                    endpoint_in: ep_in.address,
                    endpoint_out: ep_out.address,
                    out_max_packet_size: ep_out.max_packet_size,
                    interfaces,
                });
            }
        }
    }
    None
}

/// The UDID from `iSerialNumber` (§2.9, §1.9): non-ASCII becomes `?`, and a 24-character
/// serial gets the dash after its 8th character, as usbmuxd reports it.
pub fn udid_from_serial(serial: &str) -> String {
    let ascii: String = serial
        .trim()
        .chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect();
    if ascii.len() == 24 && !ascii.contains('-') {
        format!("{}-{}", &ascii[..8], &ascii[8..])
    } else {
        ascii
    }
}

/// usbmuxd's LocationID: `(bus << 16) | address` (docs/protocol.md §1).
pub fn location_id(bus: u8, address: u8) -> u32 {
    (u32::from(bus) << 16) | u32::from(address)
}

/// The sysfs name of a port path: bus 1, ports [1, 4, 2] is `1-1.4.2` (what `[slots]` maps).
pub fn port_path(bus: u8, ports: &[u8]) -> String {
    let ports: Vec<String> = ports.iter().map(u8::to_string).collect();
    format!("{bus}-{}", ports.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_answers_are_described() {
        assert_eq!(describe_mode(&[3, 3, 3, 0]), "3:3:3:0 (initial mode)");
        assert_eq!(
            describe_mode(&[5, 3, 3, 0]),
            "5:3:3:0 (not the initial mode)"
        );
        assert_eq!(describe_mode(&[3, 3]), "3:3 (unknown)");
        assert_eq!(describe_mode(&[]), " (unknown)");
    }

    fn ep(address: u8, kind: TransferKind, mps: usize) -> EndpointDesc {
        EndpointDesc {
            address,
            direction: if address & 0x80 != 0 {
                Direction::In
            } else {
                Direction::Out
            },
            kind,
            max_packet_size: mps,
        }
    }

    fn iface(number: u8, class: (u8, u8, u8), endpoints: Vec<EndpointDesc>) -> InterfaceDesc {
        InterfaceDesc {
            number,
            alternate_setting: 0,
            class: class.0,
            subclass: class.1,
            protocol: class.2,
            endpoints,
        }
    }

    /// A phone in mode 1 as usbmuxd logs show it: configuration 4 holds PTP, the mux and
    /// Apple USB Ethernet; endpoints 0x04/0x85 (§2.3).
    fn iphone() -> Vec<ConfigDesc> {
        let ptp = iface(
            0,
            (6, 1, 1),
            vec![
                ep(0x81, TransferKind::Bulk, 512),
                ep(0x02, TransferKind::Bulk, 512),
                ep(0x83, TransferKind::Interrupt, 64),
            ],
        );
        let mux = iface(
            1,
            MUX_CLASS,
            vec![
                ep(0x04, TransferKind::Bulk, 512),
                ep(0x85, TransferKind::Bulk, 512),
            ],
        );
        let ethernet = iface(
            2,
            (0xFF, 0xFD, 0x01),
            vec![
                ep(0x86, TransferKind::Bulk, 512),
                ep(0x07, TransferKind::Bulk, 512),
            ],
        );
        vec![
            ConfigDesc {
                value: 1,
                interfaces: vec![ptp.clone()],
            },
            ConfigDesc {
                value: 2,
                interfaces: vec![ptp.clone(), iface(1, (0xFF, 0xFE, 0x02), vec![])],
            },
            ConfigDesc {
                value: 3,
                interfaces: vec![ptp.clone(), mux.clone()],
            },
            ConfigDesc {
                value: 4,
                interfaces: vec![ptp, mux, ethernet],
            },
        ]
    }

    #[test]
    fn highest_configuration_with_the_mux_wins() {
        assert_eq!(
            choose_mux(&iphone()),
            Some(MuxChoice {
                configuration: 4,
                interface: 1,
                endpoint_in: 0x85,
                endpoint_out: 0x04,
                out_max_packet_size: 512,
                interfaces: vec![0, 1, 2],
            })
        );
    }

    #[test]
    fn near_misses_are_not_the_mux() {
        let mut configs = iphone();
        configs.retain(|c| c.value == 4);
        // Right class, but an interrupt endpoint instead of bulk.
        configs[0].interfaces[1].endpoints[1].kind = TransferKind::Interrupt;
        assert_eq!(choose_mux(&configs), None);
        configs[0].interfaces[1].endpoints[1].kind = TransferKind::Bulk;
        // Only alternate setting 0 counts.
        configs[0].interfaces[1].alternate_setting = 1;
        assert_eq!(choose_mux(&configs), None);
        configs[0].interfaces[1].alternate_setting = 0;
        // usbmuxd's OR of the class test would take 255/253/1; the intent is AND.
        configs[0].interfaces[1].protocol = 1;
        assert_eq!(choose_mux(&configs), None);
        // Configuration value 0 is "unconfigured", never a choice.
        let mut zero = iphone();
        zero.retain(|c| c.value == 3);
        zero[0].value = 0;
        assert_eq!(choose_mux(&zero), None);
    }

    #[test]
    fn a_lower_configuration_is_taken_when_the_top_has_no_mux() {
        let mut configs = iphone();
        configs.retain(|c| c.value != 4);
        let choice = choose_mux(&configs).expect("configuration 3");
        assert_eq!((choice.configuration, choice.interfaces), (3, vec![0, 1]));
    }

    #[test]
    fn phones_are_recognised_by_vendor_and_product() {
        assert!(is_phone(0x05AC, 0x12A8));
        assert!(is_phone(0x05AC, 0x1290));
        assert!(is_phone(0x05AC, 0x12AF));
        assert!(!is_phone(0x05AC, 0x12B0));
        assert!(!is_phone(0x05AC, 0x1281), "recovery mode");
        assert!(!is_phone(0x05AC, 0x8600), "T2 coprocessor");
        assert!(!is_phone(0x1234, 0x12A8));
    }

    #[test]
    fn serial_numbers_become_udids() {
        assert_eq!(
            udid_from_serial("00008030001A2B3C4D5E802E"),
            "00008030-001A2B3C4D5E802E"
        );
        let old = "a".repeat(40);
        assert_eq!(udid_from_serial(&old), old);
        assert_eq!(udid_from_serial("abc\u{e9}"), "abc?");
    }

    #[test]
    fn locations_and_port_paths() {
        assert_eq!(location_id(3, 2), 0x0003_0002);
        assert_eq!(port_path(1, &[1, 4, 2]), "1-1.4.2");
        assert_eq!(port_path(2, &[3]), "2-3");
    }
}
