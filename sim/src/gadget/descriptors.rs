//! What a FunctionFS function writes to its `ep0` before the gadget can bind, and what it
//! reads back from it: the descriptors blob, the strings blob, events and SETUP requests.
//!
//! Byte layout from the kernel's `include/uapi/linux/usb/functionfs.h` (all numbers
//! little-endian): the descriptors blob is `magic = 3 (DESCRIPTORS_MAGIC_V2)`, `length` (the
//! whole blob), `flags`, then one `u32` count per speed the flags announce (full, high,
//! super speed), then each speed's descriptors back to back. The strings blob is
//! `magic = 2`, `length`, `str_count`, `lang_count`, then per language a `u16` language id
//! followed by `str_count` NUL-terminated strings. An event is 12 bytes: an 8-byte
//! `usb_ctrlrequest` (meaningful for SETUP), the type, 3 bytes of padding. Standard USB
//! descriptor layouts from USB 2.0 §9.6. Pure code: tested on exact bytes everywhere, used
//! on Linux by the gadget.

/// `FUNCTIONFS_DESCRIPTORS_MAGIC_V2`.
const DESCRIPTORS_MAGIC_V2: u32 = 3;
/// `FUNCTIONFS_STRINGS_MAGIC`.
const STRINGS_MAGIC: u32 = 2;

/// `enum functionfs_flags`.
pub mod flags {
    pub const HAS_FS_DESC: u32 = 1;
    pub const HAS_HS_DESC: u32 = 2;
    /// Deliver SETUP requests of any recipient (the device-recipient vendor requests of
    /// docs/protocol.md §2.2), not only those for our interface or endpoints.
    pub const ALL_CTRL_RECIP: u32 = 64;
    /// Deliver them while the device is still unconfigured too (usbmuxd may ask the mode
    /// before it picks a configuration).
    pub const CONFIG0_SETUP: u32 = 128;
}

const USB_DT_INTERFACE: u8 = 4;
const USB_DT_ENDPOINT: u8 = 5;
const USB_DIR_IN: u8 = 0x80;

/// Full-speed bulk endpoints carry at most 64 bytes per packet, high-speed ones 512.
pub const FULL_SPEED_BULK_PACKET: u16 = 64;
pub const HIGH_SPEED_BULK_PACKET: u16 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Device to host.
    In,
    /// Host to device.
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    Bulk,
    /// With its polling interval (frames at full speed; the high-speed `bInterval` is
    /// derived).
    Interrupt {
        max_packet: u16,
        interval: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// 1..=15; FunctionFS hands out the real addresses, this only has to be unique within
    /// the function. FunctionFS names the files `ep1`, `ep2`, … in this list's order.
    pub number: u8,
    pub direction: Direction,
    pub transfer: Transfer,
}

/// One interface (alternate setting 0) of a FunctionFS function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    /// Its `iInterface` text (string 1 of the function's strings).
    pub name: String,
    pub endpoints: Vec<Endpoint>,
}

/// The interfaces a real iPhone shows (docs/protocol.md §2.3).
impl Interface {
    /// `255/254/2`, "Apple USB Multiplexor": the mux, bulk IN and bulk OUT.
    pub fn mux() -> Interface {
        Interface {
            class: 0xff,
            subclass: 0xfe,
            protocol: 2,
            name: "Apple USB Multiplexor".to_string(),
            endpoints: vec![
                Endpoint {
                    number: 1,
                    direction: Direction::Out,
                    transfer: Transfer::Bulk,
                },
                Endpoint {
                    number: 2,
                    direction: Direction::In,
                    transfer: Transfer::Bulk,
                },
            ],
        }
    }

    /// `6/1/1` still image capture (PTP): bulk IN, bulk OUT, interrupt IN.
    pub fn ptp() -> Interface {
        Interface {
            class: 6,
            subclass: 1,
            protocol: 1,
            name: "PTP".to_string(),
            endpoints: vec![
                Endpoint {
                    number: 1,
                    direction: Direction::In,
                    transfer: Transfer::Bulk,
                },
                Endpoint {
                    number: 2,
                    direction: Direction::Out,
                    transfer: Transfer::Bulk,
                },
                Endpoint {
                    number: 3,
                    direction: Direction::In,
                    transfer: Transfer::Interrupt {
                        max_packet: 64,
                        interval: 8,
                    },
                },
            ],
        }
    }

    /// `255/253/1`, Apple USB Ethernet (what `ipheth` drives): bulk IN and bulk OUT.
    pub fn apple_ethernet() -> Interface {
        Interface {
            class: 0xff,
            subclass: 0xfd,
            protocol: 1,
            name: "Apple USB Ethernet".to_string(),
            endpoints: vec![
                Endpoint {
                    number: 1,
                    direction: Direction::In,
                    transfer: Transfer::Bulk,
                },
                Endpoint {
                    number: 2,
                    direction: Direction::Out,
                    transfer: Transfer::Bulk,
                },
            ],
        }
    }

    pub fn is_mux(&self) -> bool {
        (self.class, self.subclass, self.protocol) == (0xff, 0xfe, 2)
    }

    /// The `epN` file of the first endpoint with this direction (for the mux: the pipe).
    pub fn endpoint_file(&self, direction: Direction) -> Option<String> {
        self.endpoints
            .iter()
            .position(|e| e.direction == direction)
            .map(|i| format!("ep{}", i + 1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speed {
    Full,
    High,
}

fn push_interface(out: &mut Vec<u8>, iface: &Interface) {
    out.extend_from_slice(&[
        9,
        USB_DT_INTERFACE,
        0, // bInterfaceNumber: FunctionFS renumbers
        0, // bAlternateSetting
        iface.endpoints.len() as u8,
        iface.class,
        iface.subclass,
        iface.protocol,
        1, // iInterface: string 1 of the strings blob
    ]);
}

fn push_endpoint(out: &mut Vec<u8>, ep: &Endpoint, speed: Speed) {
    let address = match ep.direction {
        Direction::In => USB_DIR_IN | ep.number,
        Direction::Out => ep.number,
    };
    let (attributes, max_packet, interval) = match (ep.transfer, speed) {
        (Transfer::Bulk, Speed::Full) => (2u8, FULL_SPEED_BULK_PACKET, 0u8),
        (Transfer::Bulk, Speed::High) => (2, HIGH_SPEED_BULK_PACKET, 0),
        (
            Transfer::Interrupt {
                max_packet,
                interval,
            },
            Speed::Full,
        ) => (3, max_packet, interval),
        // High speed counts in 125 µs microframes as 2^(bInterval-1): 8 ms ≈ 2^(7-1)·125 µs.
        (
            Transfer::Interrupt {
                max_packet,
                interval,
            },
            Speed::High,
        ) => (3, max_packet, high_speed_interval(interval)),
    };
    let [lo, hi] = max_packet.to_le_bytes();
    out.extend_from_slice(&[7, USB_DT_ENDPOINT, address, attributes, lo, hi, interval]);
}

/// The high-speed `bInterval` (exponent, 1..=16) closest to `ms` milliseconds.
fn high_speed_interval(ms: u8) -> u8 {
    let microframes = u32::from(ms.max(1)) * 8;
    let exponent = 32 - microframes.leading_zeros(); // floor(log2) + 1
    exponent.clamp(1, 16) as u8
}

fn speed_descriptors(iface: &Interface, speed: Speed) -> (u32, Vec<u8>) {
    let mut out = Vec::new();
    push_interface(&mut out, iface);
    for ep in &iface.endpoints {
        push_endpoint(&mut out, ep, speed);
    }
    (1 + iface.endpoints.len() as u32, out)
}

/// The descriptors blob for one interface at full and high speed, with `extra_flags`
/// (e.g. [`flags::ALL_CTRL_RECIP`]) added to the speed flags.
pub fn descriptors_blob(iface: &Interface, extra_flags: u32) -> Vec<u8> {
    let (fs_count, fs) = speed_descriptors(iface, Speed::Full);
    let (hs_count, hs) = speed_descriptors(iface, Speed::High);
    let length = 4 * 5 + fs.len() + hs.len();
    let mut out = Vec::with_capacity(length);
    out.extend_from_slice(&DESCRIPTORS_MAGIC_V2.to_le_bytes());
    out.extend_from_slice(&(length as u32).to_le_bytes());
    let all_flags = flags::HAS_FS_DESC | flags::HAS_HS_DESC | extra_flags;
    out.extend_from_slice(&all_flags.to_le_bytes());
    out.extend_from_slice(&fs_count.to_le_bytes());
    out.extend_from_slice(&hs_count.to_le_bytes());
    out.extend_from_slice(&fs);
    out.extend_from_slice(&hs);
    out
}

/// US English, the one language a phone's strings come in.
pub const LANG_EN_US: u16 = 0x0409;

/// The strings blob: `strings` (string ids 1, 2, … of the function) in US English. Strings
/// must not contain NUL (it ends each one); a NUL is dropped.
pub fn strings_blob(strings: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&LANG_EN_US.to_le_bytes());
    for s in strings {
        body.extend(s.bytes().filter(|b| *b != 0));
        body.push(0);
    }
    let length = 16 + body.len();
    let mut out = Vec::with_capacity(length);
    out.extend_from_slice(&STRINGS_MAGIC.to_le_bytes());
    out.extend_from_slice(&(length as u32).to_le_bytes());
    out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// `struct usb_ctrlrequest` (USB 2.0 §9.3), as a SETUP event carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlRequest {
    pub request_type: u8,
    pub request: u8,
    pub value: u16,
    pub index: u16,
    pub length: u16,
}

impl ControlRequest {
    /// Device to host (the answer is written to ep0) or host to device (read from it).
    pub fn is_in(&self) -> bool {
        self.request_type & USB_DIR_IN != 0
    }
}

/// Size of `struct usb_functionfs_event`.
pub const EVENT_SIZE: usize = 12;

/// `enum usb_functionfs_event_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Bind,
    Unbind,
    /// The host chose a configuration holding this function: the endpoints work now.
    Enable,
    /// The configuration went away (another one chosen, reset, unbind).
    Disable,
    Setup(ControlRequest),
    Suspend,
    Resume,
    /// A type this code does not know (newer kernels).
    Unknown(u8),
}

impl Event {
    pub fn parse(bytes: &[u8; EVENT_SIZE]) -> Event {
        match bytes[8] {
            0 => Event::Bind,
            1 => Event::Unbind,
            2 => Event::Enable,
            3 => Event::Disable,
            4 => Event::Setup(ControlRequest {
                request_type: bytes[0],
                request: bytes[1],
                value: u16::from_le_bytes([bytes[2], bytes[3]]),
                index: u16::from_le_bytes([bytes[4], bytes[5]]),
                length: u16::from_le_bytes([bytes[6], bytes[7]]),
            }),
            5 => Event::Suspend,
            6 => Event::Resume,
            other => Event::Unknown(other),
        }
    }
}

/// The vendor requests usbmuxd sends to a phone (docs/protocol.md §2.2).
pub mod apple {
    /// `bmRequestType` of both: vendor, device recipient, device to host.
    pub const VENDOR_DEVICE_IN: u8 = 0xc0;
    /// Ask the mode; the phone answers 4 bytes.
    pub const GET_MODE: u8 = 0x45;
    /// Switch to the mode in `wIndex`; the phone answers 1 byte, 0 = done.
    pub const SET_MODE: u8 = 0x52;
    /// The answer to GET_MODE in the initial mode 1 (usbmuxd's own comment, §2.2).
    pub const MODE_INITIAL_ANSWER: [u8; 4] = [3, 3, 3, 0];
    /// The only mode a bench phone is in (and stays in, §2.2 "never switch").
    pub const MODE_INITIAL: u16 = 1;
}

/// What a phone answers to a control request no standard handler took: `Some(bytes)` to
/// send (an IN request's data stage, cut to `wLength`), `None` to stall it.
pub fn vendor_answer(req: &ControlRequest) -> Option<Vec<u8>> {
    if req.request_type != apple::VENDOR_DEVICE_IN {
        return None;
    }
    let mut answer = match req.request {
        apple::GET_MODE => apple::MODE_INITIAL_ANSWER.to_vec(),
        // Staying in mode 1 is a success; any other mode is refused (a non-zero byte), so
        // the phone never re-enumerates in a shape it does not have.
        apple::SET_MODE => vec![u8::from(req.index != apple::MODE_INITIAL)],
        _ => return None,
    };
    answer.truncate(usize::from(req.length));
    Some(answer)
}

/// The USB serial number (`iSerialNumber`) of a UDID: a new-style UDID
/// (`00008030-001A2B3C4D5E6F70`, §1.9) goes without its dash, as the phone reports it and
/// usbmuxd puts the dash back; a 40-character one goes as it is.
pub fn usb_serial(udid: &str) -> String {
    let bytes = udid.as_bytes();
    if udid.len() == 25 && bytes[8] == b'-' {
        udid.replace('-', "")
    } else {
        udid.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mux_descriptors_blob_exact_bytes() {
        let blob = descriptors_blob(
            &Interface::mux(),
            flags::ALL_CTRL_RECIP | flags::CONFIG0_SETUP,
        );
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            3, 0, 0, 0,            // magic: DESCRIPTORS_MAGIC_V2
            66, 0, 0, 0,           // length: 20 + 2 × (9 + 7 + 7)
            0xc3, 0, 0, 0,         // flags: FS | HS | ALL_CTRL_RECIP | CONFIG0_SETUP
            3, 0, 0, 0,            // fs_count
            3, 0, 0, 0,            // hs_count
            // full speed
            9, 4, 0, 0, 2, 0xff, 0xfe, 2, 1,
            7, 5, 0x01, 2, 64, 0, 0,
            7, 5, 0x82, 2, 64, 0, 0,
            // high speed
            9, 4, 0, 0, 2, 0xff, 0xfe, 2, 1,
            7, 5, 0x01, 2, 0, 2, 0,
            7, 5, 0x82, 2, 0, 2, 0,
        ];
        assert_eq!(blob, expected);
    }

    #[test]
    fn ptp_descriptors_carry_the_interrupt_endpoint_at_both_speeds() {
        let blob = descriptors_blob(&Interface::ptp(), 0);
        assert_eq!(
            &blob[..20],
            &[3, 0, 0, 0, 80, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0]
        );
        assert_eq!(blob.len(), 80);
        // Full speed: 8 frames; high speed: 2^(7-1) microframes = 8 ms.
        assert_eq!(&blob[20 + 9 + 14..20 + 9 + 21], &[7, 5, 0x83, 3, 64, 0, 8]);
        assert_eq!(&blob[blob.len() - 7..], &[7, 5, 0x83, 3, 64, 0, 7]);
    }

    #[test]
    fn strings_blob_exact_bytes() {
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            2, 0, 0, 0,            // magic: STRINGS_MAGIC
            26, 0, 0, 0,           // length: 16 + 2 + 4 + 4
            2, 0, 0, 0,            // str_count
            1, 0, 0, 0,            // lang_count
            0x09, 0x04,            // en-US
            b'M', b'u', b'x', 0,
            b'P', b'T', b'P', 0,
        ];
        assert_eq!(strings_blob(&["Mux", "PTP"]), expected);
        // A NUL would end the string early: it is dropped.
        assert_eq!(strings_blob(&["Mux", "PT\0P"]), expected);
        assert_eq!(
            strings_blob(&[]),
            vec![2, 0, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9, 4]
        );
    }

    #[test]
    fn events_parse() {
        let setup = [0xc0, 0x45, 0, 0, 0, 0, 4, 0, 4, 0, 0, 0];
        assert_eq!(
            Event::parse(&setup),
            Event::Setup(ControlRequest {
                request_type: 0xc0,
                request: 0x45,
                value: 0,
                index: 0,
                length: 4
            })
        );
        let mut enable = [0u8; EVENT_SIZE];
        enable[8] = 2;
        assert_eq!(Event::parse(&enable), Event::Enable);
        enable[8] = 9;
        assert_eq!(Event::parse(&enable), Event::Unknown(9));
    }

    #[test]
    fn vendor_requests_answer_as_a_phone_in_mode_1() {
        let get = ControlRequest {
            request_type: 0xc0,
            request: 0x45,
            value: 0,
            index: 0,
            length: 4,
        };
        assert_eq!(vendor_answer(&get), Some(vec![3, 3, 3, 0]));
        let short = ControlRequest { length: 2, ..get };
        assert_eq!(vendor_answer(&short), Some(vec![3, 3]));
        let stay = ControlRequest {
            request: 0x52,
            index: 1,
            length: 1,
            ..get
        };
        assert_eq!(vendor_answer(&stay), Some(vec![0]));
        let switch = ControlRequest { index: 3, ..stay };
        assert_eq!(vendor_answer(&switch), Some(vec![1]));
        let other = ControlRequest {
            request: 0x40,
            ..get
        };
        assert_eq!(vendor_answer(&other), None);
        let class = ControlRequest {
            request_type: 0xa1,
            ..get
        };
        assert_eq!(vendor_answer(&class), None);
    }

    #[test]
    fn usb_serial_drops_the_dash_of_new_udids_only() {
        assert_eq!(
            usb_serial("00008030-001A2B3C4D5E6F70"),
            "00008030001A2B3C4D5E6F70"
        );
        let old = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(usb_serial(old), old);
    }

    #[test]
    fn endpoint_files_follow_descriptor_order() {
        let mux = Interface::mux();
        assert_eq!(mux.endpoint_file(Direction::Out).as_deref(), Some("ep1"));
        assert_eq!(mux.endpoint_file(Direction::In).as_deref(), Some("ep2"));
        assert!(mux.is_mux());
        assert!(!Interface::ptp().is_mux());
    }
}
