//! The pair record plist (docs/protocol.md §4.1).

use std::fmt;
use std::io::Cursor;

use plist::{Dictionary, Value};

use super::{type_name, PairingError};

pub(crate) const DEVICE_CERTIFICATE: &str = "DeviceCertificate";
pub(crate) const HOST_CERTIFICATE: &str = "HostCertificate";
pub(crate) const HOST_PRIVATE_KEY: &str = "HostPrivateKey";
pub(crate) const ROOT_CERTIFICATE: &str = "RootCertificate";
pub(crate) const ROOT_PRIVATE_KEY: &str = "RootPrivateKey";
pub(crate) const HOST_ID: &str = "HostID";
pub(crate) const SYSTEM_BUID: &str = "SystemBUID";
pub(crate) const WIFI_MAC_ADDRESS: &str = "WiFiMACAddress";
pub(crate) const ESCROW_BAG: &str = "EscrowBag";
pub(crate) const UDID: &str = "UDID";

/// A pair record as usbmuxd stores it in `/var/lib/lockdown/<UDID>.plist` and hands out
/// through `ReadPairRecord`.
///
/// Certificates and keys are PEM bytes held in plist *data* values, as libimobiledevice
/// writes them. Keys this type does not know are kept in [`extra`](Self::extra) so that
/// rewriting a record written by another tool loses nothing.
///
/// `Debug` never shows the private keys or the escrow bag: records end up in logs.
#[derive(Clone, PartialEq)]
pub struct PairRecord {
    /// PEM certificate over the phone's public key, signed by the root.
    pub device_certificate: Vec<u8>,
    /// PEM host leaf certificate (a TLS client certificate).
    pub host_certificate: Vec<u8>,
    /// PEM private key of the host certificate. Secret.
    pub host_private_key: Vec<u8>,
    /// PEM self-signed root certificate (also usable as TLS client certificate).
    pub root_certificate: Vec<u8>,
    /// PEM private key of the root. Secret.
    pub root_private_key: Vec<u8>,
    /// Per-pairing host identity, an uppercase UUID; sent in `StartSession`.
    pub host_id: String,
    /// Host identity shared by all phones of this host (usbmuxd `ReadBUID`).
    pub system_buid: String,
    /// The phone's `WiFiAddress`, read before `Pair`.
    pub wifi_mac_address: Option<String>,
    /// Returned by a successful `Pair`; lets the host unlock the phone's keybag. Secret.
    pub escrow_bag: Option<Vec<u8>>,
    /// Present in some records (Apple-written ones); informational.
    pub udid: Option<String>,
    /// Keys not listed above, kept verbatim and in their original order.
    pub extra: Dictionary,
}

impl PairRecord {
    /// Parses a record from XML or binary plist bytes (usbmuxd accepts both and so do we).
    ///
    /// A missing required key gives [`PairingError::MissingKey`] naming it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PairingError> {
        let value = Value::from_reader(Cursor::new(bytes))
            .map_err(|source| PairingError::Plist { source })?;
        match value {
            Value::Dictionary(dict) => Self::from_dictionary(dict),
            _ => Err(PairingError::NotADictionary),
        }
    }

    /// Builds a record from an already-decoded plist dictionary (e.g. a `PairRecord` dict
    /// embedded in another message).
    pub fn from_dictionary(dict: Dictionary) -> Result<Self, PairingError> {
        let mut device_certificate = None;
        let mut host_certificate = None;
        let mut host_private_key = None;
        let mut root_certificate = None;
        let mut root_private_key = None;
        let mut host_id = None;
        let mut system_buid = None;
        let mut wifi_mac_address = None;
        let mut escrow_bag = None;
        let mut udid = None;
        let mut extra = Dictionary::new();

        // Walk in order (rather than `remove` known keys) so `extra` keeps the file's order.
        for (key, value) in dict {
            match key.as_str() {
                DEVICE_CERTIFICATE => {
                    device_certificate = Some(pem_bytes(DEVICE_CERTIFICATE, value)?)
                }
                HOST_CERTIFICATE => host_certificate = Some(pem_bytes(HOST_CERTIFICATE, value)?),
                HOST_PRIVATE_KEY => host_private_key = Some(pem_bytes(HOST_PRIVATE_KEY, value)?),
                ROOT_CERTIFICATE => root_certificate = Some(pem_bytes(ROOT_CERTIFICATE, value)?),
                ROOT_PRIVATE_KEY => root_private_key = Some(pem_bytes(ROOT_PRIVATE_KEY, value)?),
                HOST_ID => host_id = Some(string(HOST_ID, value)?),
                SYSTEM_BUID => system_buid = Some(string(SYSTEM_BUID, value)?),
                WIFI_MAC_ADDRESS => wifi_mac_address = Some(string(WIFI_MAC_ADDRESS, value)?),
                ESCROW_BAG => escrow_bag = Some(data(ESCROW_BAG, value)?),
                UDID => udid = Some(string(UDID, value)?),
                _ => {
                    extra.insert(key, value);
                }
            }
        }

        Ok(Self {
            device_certificate: required(DEVICE_CERTIFICATE, device_certificate)?,
            host_certificate: required(HOST_CERTIFICATE, host_certificate)?,
            host_private_key: required(HOST_PRIVATE_KEY, host_private_key)?,
            root_certificate: required(ROOT_CERTIFICATE, root_certificate)?,
            root_private_key: required(ROOT_PRIVATE_KEY, root_private_key)?,
            host_id: required(HOST_ID, host_id)?,
            system_buid: required(SYSTEM_BUID, system_buid)?,
            wifi_mac_address,
            escrow_bag,
            udid,
            extra,
        })
    }

    /// The whole record, private keys included, as a plist dictionary.
    pub fn to_value(&self) -> Value {
        let mut dict = Dictionary::new();
        dict.insert(
            DEVICE_CERTIFICATE.into(),
            Value::Data(self.device_certificate.clone()),
        );
        if let Some(bag) = &self.escrow_bag {
            dict.insert(ESCROW_BAG.into(), Value::Data(bag.clone()));
        }
        dict.insert(
            HOST_CERTIFICATE.into(),
            Value::Data(self.host_certificate.clone()),
        );
        dict.insert(HOST_ID.into(), Value::String(self.host_id.clone()));
        dict.insert(
            HOST_PRIVATE_KEY.into(),
            Value::Data(self.host_private_key.clone()),
        );
        dict.insert(
            ROOT_CERTIFICATE.into(),
            Value::Data(self.root_certificate.clone()),
        );
        dict.insert(
            ROOT_PRIVATE_KEY.into(),
            Value::Data(self.root_private_key.clone()),
        );
        dict.insert(SYSTEM_BUID.into(), Value::String(self.system_buid.clone()));
        if let Some(udid) = &self.udid {
            dict.insert(UDID.into(), Value::String(udid.clone()));
        }
        if let Some(mac) = &self.wifi_mac_address {
            dict.insert(WIFI_MAC_ADDRESS.into(), Value::String(mac.clone()));
        }
        for (key, value) in &self.extra {
            dict.insert(key.clone(), value.clone());
        }
        Value::Dictionary(dict)
    }

    /// XML plist bytes, the form usbmuxd writes to disk.
    ///
    /// UIDs (possible only in an `extra` value read from a binary plist) have no XML form;
    /// they are written the way CoreFoundation does, as `{CF$UID: n}`.
    pub fn to_xml(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Serialising a `Value` into a Vec can only fail on I/O errors, which a Vec never
        // returns, or on UIDs, which `xml_compatible` has removed.
        #[allow(clippy::expect_used)]
        xml_compatible(self.to_value())
            .to_writer_xml(&mut out)
            .expect("writing a UID-free plist Value to a Vec cannot fail");
        out
    }

    /// Binary plist bytes, the form libimobiledevice sends in usbmuxd `SavePairRecord`.
    pub fn to_binary(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Binary plists can hold every `Value`; a Vec never fails to grow.
        #[allow(clippy::expect_used)]
        self.to_value()
            .to_writer_binary(&mut out)
            .expect("writing a plist Value to a Vec cannot fail");
        out
    }

    /// The `PairRecord` dictionary sent inside lockdown `Pair`: the public half only.
    ///
    /// libimobiledevice strips both private keys before sending; so do we, since the phone
    /// has no use for them.
    pub fn pair_request_value(&self) -> Value {
        let mut dict = Dictionary::new();
        dict.insert(
            DEVICE_CERTIFICATE.into(),
            Value::Data(self.device_certificate.clone()),
        );
        dict.insert(
            HOST_CERTIFICATE.into(),
            Value::Data(self.host_certificate.clone()),
        );
        dict.insert(HOST_ID.into(), Value::String(self.host_id.clone()));
        dict.insert(
            ROOT_CERTIFICATE.into(),
            Value::Data(self.root_certificate.clone()),
        );
        dict.insert(SYSTEM_BUID.into(), Value::String(self.system_buid.clone()));
        if let Some(mac) = &self.wifi_mac_address {
            dict.insert(WIFI_MAC_ADDRESS.into(), Value::String(mac.clone()));
        }
        Value::Dictionary(dict)
    }
}

impl fmt::Debug for PairRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extra_keys: Vec<&String> = self.extra.keys().collect();
        f.debug_struct("PairRecord")
            .field("host_id", &self.host_id)
            .field("system_buid", &self.system_buid)
            .field("udid", &self.udid)
            .field("wifi_mac_address", &self.wifi_mac_address)
            .field("device_certificate", &Len(self.device_certificate.len()))
            .field("host_certificate", &Len(self.host_certificate.len()))
            .field("root_certificate", &Len(self.root_certificate.len()))
            .field("host_private_key", &Redacted)
            .field("root_private_key", &Redacted)
            .field("escrow_bag", &self.escrow_bag.as_ref().map(|_| Redacted))
            // Values of unknown keys may be secret too: show only their names.
            .field("extra_keys", &extra_keys)
            .finish()
    }
}

/// Debug stand-in for a byte field: its size only.
struct Len(usize);

impl fmt::Debug for Len {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

/// Debug stand-in for a secret.
pub(crate) struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

fn required<T>(key: &'static str, value: Option<T>) -> Result<T, PairingError> {
    value.ok_or(PairingError::MissingKey { key })
}

/// PEM fields are data in usbmuxd/libimobiledevice records; some tools write strings.
/// Accept both so such a record can still be read (it is written back as data).
pub(crate) fn pem_bytes(key: &'static str, value: Value) -> Result<Vec<u8>, PairingError> {
    match value {
        Value::Data(bytes) => Ok(bytes),
        Value::String(text) => Ok(text.into_bytes()),
        other => Err(PairingError::WrongType {
            key,
            expected: "data (PEM)",
            found: type_name(&other),
        }),
    }
}

pub(crate) fn string(key: &'static str, value: Value) -> Result<String, PairingError> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(PairingError::WrongType {
            key,
            expected: "a string",
            found: type_name(&other),
        }),
    }
}

fn data(key: &'static str, value: Value) -> Result<Vec<u8>, PairingError> {
    match value {
        Value::Data(bytes) => Ok(bytes),
        other => Err(PairingError::WrongType {
            key,
            expected: "data",
            found: type_name(&other),
        }),
    }
}

/// Replaces UIDs, which XML plists cannot hold, by CoreFoundation's XML form `{CF$UID: n}`.
fn xml_compatible(value: Value) -> Value {
    match value {
        Value::Uid(uid) => {
            let mut dict = Dictionary::new();
            dict.insert("CF$UID".into(), Value::Integer(uid.get().into()));
            Value::Dictionary(dict)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(xml_compatible).collect()),
        Value::Dictionary(dict) => Value::Dictionary(
            dict.into_iter()
                .map(|(key, value)| (key, xml_compatible(value)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A syntactically complete record; the PEM contents do not matter at this layer.
    fn sample() -> PairRecord {
        PairRecord {
            device_certificate: b"-----BEGIN CERTIFICATE-----\nREVW\n-----END CERTIFICATE-----\n"
                .to_vec(),
            host_certificate: b"-----BEGIN CERTIFICATE-----\nSE9TVA==\n-----END CERTIFICATE-----\n"
                .to_vec(),
            host_private_key:
                b"-----BEGIN PRIVATE KEY-----\nSECRET-HOST-KEY\n-----END PRIVATE KEY-----\n"
                    .to_vec(),
            root_certificate: b"-----BEGIN CERTIFICATE-----\nUk9PVA==\n-----END CERTIFICATE-----\n"
                .to_vec(),
            root_private_key:
                b"-----BEGIN PRIVATE KEY-----\nSECRET-ROOT-KEY\n-----END PRIVATE KEY-----\n"
                    .to_vec(),
            host_id: "2A5F3C1E-7B4D-4E8A-9C0F-1D2E3F405162".into(),
            system_buid: "8C1F0D2E-3A4B-4C5D-8E6F-708192A3B4C5".into(),
            wifi_mac_address: Some("a4:c3:61:00:11:22".into()),
            escrow_bag: Some(b"SECRET-ESCROW".to_vec()),
            udid: Some("00008030-001A2B3C4D5E6F70".into()),
            extra: Dictionary::new(),
        }
    }

    #[test]
    fn xml_round_trip() -> TestResult {
        let record = sample();
        let xml = record.to_xml();
        assert!(xml.starts_with(b"<?xml"));
        assert_eq!(PairRecord::from_bytes(&xml)?, record);
        Ok(())
    }

    #[test]
    fn binary_round_trip() -> TestResult {
        let record = sample();
        let bin = record.to_binary();
        assert!(bin.starts_with(b"bplist00"));
        assert_eq!(PairRecord::from_bytes(&bin)?, record);
        Ok(())
    }

    #[test]
    fn pem_fields_are_data_and_ids_are_strings() {
        let Value::Dictionary(dict) = sample().to_value() else {
            panic!("to_value must give a dictionary");
        };
        for key in [
            DEVICE_CERTIFICATE,
            HOST_CERTIFICATE,
            HOST_PRIVATE_KEY,
            ROOT_CERTIFICATE,
            ROOT_PRIVATE_KEY,
            ESCROW_BAG,
        ] {
            assert!(matches!(dict.get(key), Some(Value::Data(_))), "{key}");
        }
        for key in [HOST_ID, SYSTEM_BUID, WIFI_MAC_ADDRESS, UDID] {
            assert!(matches!(dict.get(key), Some(Value::String(_))), "{key}");
        }
    }

    #[test]
    fn unknown_keys_survive_round_trip() -> TestResult {
        let Value::Dictionary(mut dict) = sample().to_value() else {
            panic!("to_value must give a dictionary");
        };
        dict.insert("ZFutureKey".into(), Value::Integer(7.into()));
        dict.insert(
            "AppleNested".into(),
            Value::Array(vec![Value::Boolean(true)]),
        );
        let mut original = Vec::new();
        Value::Dictionary(dict).to_writer_xml(&mut original)?;

        let record = PairRecord::from_bytes(&original)?;
        assert_eq!(record.extra.len(), 2);
        let again = PairRecord::from_bytes(&record.to_xml())?;
        assert_eq!(again, record);
        assert_eq!(
            again.extra.get("ZFutureKey"),
            Some(&Value::Integer(7.into()))
        );
        let again = PairRecord::from_bytes(&record.to_binary())?;
        assert_eq!(again, record);
        Ok(())
    }

    #[test]
    fn uid_in_extra_is_written_as_cf_uid() -> TestResult {
        let mut record = sample();
        record
            .extra
            .insert("Archived".into(), Value::Uid(plist::Uid::new(3)));
        let back = PairRecord::from_bytes(&record.to_xml())?;
        let Some(Value::Dictionary(uid)) = back.extra.get("Archived") else {
            panic!("UID must become a CF$UID dictionary");
        };
        assert_eq!(uid.get("CF$UID"), Some(&Value::Integer(3.into())));
        assert_eq!(PairRecord::from_bytes(&record.to_binary())?, record);
        Ok(())
    }

    #[test]
    fn optional_keys_may_be_absent() -> TestResult {
        let mut record = sample();
        record.wifi_mac_address = None;
        record.escrow_bag = None;
        record.udid = None;
        assert_eq!(PairRecord::from_bytes(&record.to_xml())?, record);
        Ok(())
    }

    #[test]
    fn missing_required_key_is_named() -> TestResult {
        for key in [
            DEVICE_CERTIFICATE,
            HOST_CERTIFICATE,
            HOST_PRIVATE_KEY,
            ROOT_CERTIFICATE,
            ROOT_PRIVATE_KEY,
            HOST_ID,
            SYSTEM_BUID,
        ] {
            let Value::Dictionary(mut dict) = sample().to_value() else {
                panic!("to_value must give a dictionary");
            };
            dict.remove(key);
            let mut bytes = Vec::new();
            Value::Dictionary(dict).to_writer_binary(&mut bytes)?;
            match PairRecord::from_bytes(&bytes) {
                Err(PairingError::MissingKey { key: missing }) => assert_eq!(missing, key),
                other => panic!("expected MissingKey({key}), got {other:?}"),
            }
        }
        Ok(())
    }

    #[test]
    fn wrong_types_and_garbage_are_errors() -> TestResult {
        let Value::Dictionary(mut dict) = sample().to_value() else {
            panic!("to_value must give a dictionary");
        };
        dict.insert(HOST_ID.into(), Value::Integer(1.into()));
        let mut bytes = Vec::new();
        Value::Dictionary(dict).to_writer_xml(&mut bytes)?;
        assert!(matches!(
            PairRecord::from_bytes(&bytes),
            Err(PairingError::WrongType { key: HOST_ID, .. })
        ));
        assert!(matches!(
            PairRecord::from_bytes(b"not a plist"),
            Err(PairingError::Plist { .. })
        ));
        let mut array = Vec::new();
        Value::Array(vec![]).to_writer_xml(&mut array)?;
        assert!(matches!(
            PairRecord::from_bytes(&array),
            Err(PairingError::NotADictionary)
        ));
        Ok(())
    }

    #[test]
    fn pem_given_as_string_is_accepted() -> TestResult {
        let record = sample();
        let Value::Dictionary(mut dict) = record.to_value() else {
            panic!("to_value must give a dictionary");
        };
        let pem = String::from_utf8(record.host_certificate.clone())?;
        dict.insert(HOST_CERTIFICATE.into(), Value::String(pem));
        assert_eq!(PairRecord::from_dictionary(dict)?, record);
        Ok(())
    }

    #[test]
    fn secrets_stay_out_of_debug_and_pair_request() -> TestResult {
        let record = sample();
        let debug = format!("{record:?}");
        for secret in [
            "SECRET-HOST-KEY",
            "SECRET-ROOT-KEY",
            "SECRET-ESCROW",
            "PRIVATE KEY",
        ] {
            assert!(!debug.contains(secret), "{secret} leaked into {debug}");
        }
        assert!(debug.contains(&record.host_id));

        let Value::Dictionary(request) = record.pair_request_value() else {
            panic!("pair_request_value must give a dictionary");
        };
        let keys: Vec<&str> = request.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                DEVICE_CERTIFICATE,
                HOST_CERTIFICATE,
                HOST_ID,
                ROOT_CERTIFICATE,
                SYSTEM_BUID,
                WIFI_MAC_ADDRESS
            ]
        );
        let mut bytes = Vec::new();
        Value::Dictionary(request).to_writer_xml(&mut bytes)?;
        let text = String::from_utf8(bytes)?;
        assert!(!text.contains(HOST_PRIVATE_KEY) && !text.contains(ROOT_PRIVATE_KEY));
        assert!(!text.contains(ESCROW_BAG));
        Ok(())
    }
}
