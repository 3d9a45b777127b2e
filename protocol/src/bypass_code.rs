//! MDM Activation Lock bypass codes (docs/mdm.md §5): 16 random bytes shown as 26 symbols
//! `XXXXX-XXXXX-XXXX-XXXX-XXXX-XXXX`, and the escrow key hash an MDM sends to Apple.
//!
//! A bypass code is a credential: [`BypassCode`]'s `Debug` and `Display` print only the masked
//! form (`3UM43-…-FKA4`), parse errors name at most one offending character, and the symbols are
//! wiped from memory on drop. The whole code is only available through the explicit
//! [`BypassCode::reveal`] / [`BypassCode::reveal_compact`].

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use zeroize::{Zeroize, Zeroizing};

/// The 32 symbols of the code, in value order; `B`, `I`, `O` and `S` are left out because they
/// read like `8`, `1`, `0` and `5`.
pub const ALPHABET: &[u8; 32] = b"0123456789ACDEFGHJKLMNPQRTUVWXYZ";
/// Symbols in a code, separators not counted.
pub const SYMBOL_COUNT: usize = 26;
/// Bytes of the raw code.
pub const RAW_LEN: usize = 16;
/// Length of the dashed display form (Apple's `MCBYPASS_CODE_LENGTH`).
pub const DASHED_LEN: usize = 31;
/// PBKDF2 rounds of the escrow key hash (micromdm/nanodep, Apple's DEP `escrow_key`).
pub const ESCROW_KEY_ITERATIONS: u32 = 50_000;

/// Symbol indexes before which the display form puts a dash: groups of 5-5-4-4-4-4.
const DASH_BEFORE: [usize; 5] = [5, 10, 14, 18, 22];
/// Length of the last display group, shown by [`BypassCode::masked`].
const LAST_GROUP_LEN: usize = 4;
/// What stands for the hidden middle groups in [`BypassCode::masked`].
const MASK: &str = "-\u{2026}-";
const ESCROW_ROUNDS: NonZeroU32 = match NonZeroU32::new(ESCROW_KEY_ITERATIONS) {
    Some(n) => n,
    None => panic!("escrow key iterations must be non-zero"),
};
/// The escrow hash is salted with four zero bytes (docs/mdm.md §5.2).
const ESCROW_SALT: [u8; 4] = [0; 4];

/// Why a text is not a bypass code. Never carries the text itself: at most one character.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BypassCodeError {
    #[error("bypass code is empty")]
    Empty,
    #[error(
        "bypass code has {found} symbols, expected {SYMBOL_COUNT} (dashes and spaces not counted)"
    )]
    WrongLength { found: usize },
    /// `position` counts characters of the input from 1, separators included.
    #[error("bypass code has an invalid character {character:?} at position {position}{}", lookalike_hint(*character))]
    InvalidCharacter { character: char, position: usize },
    /// The 26th symbol holds only the 3 remaining bits, so it is `0`–`7`.
    #[error("the last symbol of a bypass code must be 0-7, found {character:?}")]
    InvalidLastSymbol { character: char },
}

fn lookalike_hint(c: char) -> &'static str {
    match lookalike_replacement(c) {
        Some(_) => " (bypass codes never contain B, I, O or S: did you mean 8, 1, 0 or 5?)",
        None => "",
    }
}

/// The digit a letter that bypass codes never contain was probably meant to be.
fn lookalike_replacement(c: char) -> Option<char> {
    match c.to_ascii_uppercase() {
        'O' => Some('0'),
        'I' => Some('1'),
        'S' => Some('5'),
        'B' => Some('8'),
        _ => None,
    }
}

/// Characters ignored when reading a code: people type or paste it with spaces or dashes (Intune
/// says dashes are optional), and word processors turn `-` into typographic dashes.
fn is_separator(c: char) -> bool {
    c.is_whitespace() || c == '-' || ('\u{2010}'..='\u{2015}').contains(&c) || c == '\u{2212}'
}

fn symbol_value(symbol: u8) -> Option<u8> {
    ALPHABET
        .iter()
        .position(|&a| a == symbol)
        .and_then(|i| u8::try_from(i).ok())
}

/// An Activation Lock bypass code, held as its 26 normalised (upper-case) symbols.
///
/// Equality and hashing compare the normalised symbols, so `3um43 puyvy…` equals
/// `3UM43-PUYVY-…`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BypassCode {
    symbols: [u8; SYMBOL_COUNT],
}

impl BypassCode {
    /// Reads a code typed or pasted by a person: case-insensitive, spaces and dashes anywhere.
    pub fn parse(text: &str) -> Result<Self, BypassCodeError> {
        let mut symbols = Zeroizing::new([0u8; SYMBOL_COUNT]);
        let mut found = 0usize;
        let mut last_char = ' ';
        for (index, c) in text.chars().enumerate() {
            if is_separator(c) {
                continue;
            }
            let upper = c.to_ascii_uppercase();
            let valid = upper.is_ascii() && ALPHABET.contains(&(upper as u8));
            if !valid {
                return Err(BypassCodeError::InvalidCharacter {
                    character: c,
                    position: index + 1,
                });
            }
            if found < SYMBOL_COUNT {
                symbols[found] = upper as u8;
            }
            found += 1;
            last_char = c;
        }
        if found == 0 {
            return Err(BypassCodeError::Empty);
        }
        if found != SYMBOL_COUNT {
            return Err(BypassCodeError::WrongLength { found });
        }
        if !matches!(symbols[SYMBOL_COUNT - 1], b'0'..=b'7') {
            return Err(BypassCodeError::InvalidLastSymbol {
                character: last_char,
            });
        }
        Ok(Self { symbols: *symbols })
    }

    /// Encodes the raw 16 bytes: 25 big-endian 5-bit groups, then the 3 low bits right-aligned
    /// as the 26th symbol (where Apple differs from base32 padding).
    pub fn from_raw(raw: &[u8; RAW_LEN]) -> Self {
        let mut value = Zeroizing::new(u128::from_be_bytes(*raw));
        let mut symbols = [0u8; SYMBOL_COUNT];
        symbols[SYMBOL_COUNT - 1] = ALPHABET[(*value & 0b111) as usize];
        *value >>= 3;
        for slot in symbols[..SYMBOL_COUNT - 1].iter_mut().rev() {
            *slot = ALPHABET[(*value & 0b1_1111) as usize];
            *value >>= 5;
        }
        Self { symbols }
    }

    /// The raw 16 bytes the symbols stand for (the password of the escrow hash).
    pub fn to_raw(&self) -> Zeroizing<[u8; RAW_LEN]> {
        let mut value = Zeroizing::new(0u128);
        for (i, &symbol) in self.symbols.iter().enumerate() {
            // Every stored symbol came through `parse` or `from_raw`, so it is in the alphabet.
            let v = u128::from(symbol_value(symbol).unwrap_or(0));
            if i == SYMBOL_COUNT - 1 {
                *value = (*value << 3) | (v & 0b111);
            } else {
                *value = (*value << 5) | v;
            }
        }
        Zeroizing::new(value.to_be_bytes())
    }

    /// The whole code in display form `XXXXX-XXXXX-XXXX-XXXX-XXXX-XXXX`, for the activation
    /// form or `escrowKeyUnlock`. A secret: never log it.
    pub fn reveal(&self) -> String {
        let mut out = String::with_capacity(DASHED_LEN);
        for (i, &symbol) in self.symbols.iter().enumerate() {
            if DASH_BEFORE.contains(&i) {
                out.push('-');
            }
            out.push(char::from(symbol));
        }
        out
    }

    /// The whole code as 26 symbols without dashes. A secret: never log it.
    pub fn reveal_compact(&self) -> String {
        self.symbols.iter().map(|&s| char::from(s)).collect()
    }

    /// `3UM43-…-FKA4`: first and last group only, enough for an operator to tell codes apart.
    pub fn masked(&self) -> String {
        let first: String = self.symbols[..DASH_BEFORE[0]]
            .iter()
            .map(|&s| char::from(s))
            .collect();
        let last: String = self.symbols[SYMBOL_COUNT - LAST_GROUP_LEN..]
            .iter()
            .map(|&s| char::from(s))
            .collect();
        format!("{first}{MASK}{last}")
    }

    /// Whether `text` has exactly the shape [`BypassCode::masked`] produces (`3UM43-…-FKA4`),
    /// which no whole code has: what may be stored or shown where a code must not be.
    pub fn is_masked(text: &str) -> bool {
        let Some((head, tail)) = text.split_once(MASK) else {
            return false;
        };
        let symbols = |part: &str, len: usize| {
            part.len() == len && part.bytes().all(|b| ALPHABET.contains(&b))
        };
        symbols(head, DASH_BEFORE[0]) && symbols(tail, LAST_GROUP_LEN)
    }

    /// PBKDF2-HMAC-SHA256 of the raw bytes (salt: 4 zero bytes, 50 000 rounds, 32 bytes): the
    /// "escrow key" an MDM registers with Apple when it locks a device.
    pub fn escrow_key(&self) -> [u8; 32] {
        let raw = self.to_raw();
        let mut out = [0u8; 32];
        aws_lc_rs::pbkdf2::derive(
            aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
            ESCROW_ROUNDS,
            &ESCROW_SALT,
            raw.as_slice(),
            &mut out,
        );
        out
    }

    /// [`Self::escrow_key`] as 64 lower-case hex digits, the form Apple's APIs carry.
    pub fn escrow_key_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let key = self.escrow_key();
        let mut out = String::with_capacity(key.len() * 2);
        for byte in key {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        out
    }
}

impl Drop for BypassCode {
    fn drop(&mut self) {
        self.symbols.zeroize();
    }
}

impl FromStr for BypassCode {
    type Err = BypassCodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Masked: a code in a log line or an error chain must not be usable.
impl fmt::Display for BypassCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Masked, like `Display`, so `{:?}` of a struct holding a code is safe to log.
impl fmt::Debug for BypassCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BypassCode({})", self.masked())
    }
}

/// One proposed correction of a look-alike letter (see [`suggest_lookalike_fix`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookalikeCorrection {
    /// Character position in the input, from 1, separators included (as in [`BypassCodeError`]).
    pub position: usize,
    pub found: char,
    pub suggested: char,
}

/// Proposes `O→0`, `I→1`, `S→5`, `B→8` for a text that fails to parse only because of such
/// letters, and only if the corrected text is a valid code. Nothing is applied: a code is a
/// credential, so the operator confirms (docs/mdm.md §5.4).
pub fn suggest_lookalike_fix(text: &str) -> Option<Vec<LookalikeCorrection>> {
    if BypassCode::parse(text).is_ok() {
        return None;
    }
    let mut corrections = Vec::new();
    let mut fixed = Zeroizing::new(String::with_capacity(text.len()));
    for (index, c) in text.chars().enumerate() {
        match lookalike_replacement(c) {
            Some(suggested) => {
                corrections.push(LookalikeCorrection {
                    position: index + 1,
                    found: c,
                    suggested,
                });
                fixed.push(suggested);
            }
            None => fixed.push(c),
        }
    }
    if corrections.is_empty() || BypassCode::parse(&fixed).is_err() {
        return None;
    }
    Some(corrections)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/mdm.md §5.3: (raw hex, code, escrow key hex), from micromdm/nanodep's public tests.
    const VECTORS: [(&str, &str, &str); 7] = [
        (
            "00000000000000000000000000000000",
            "00000-00000-0000-0000-0000-0000",
            "deab860d28deb5b7121d6d8fcf0f78e1471756d1b2c566c03277c23ea8930b4f",
        ),
        (
            "1ea841db5edfafe6075b5ae0d845d254",
            "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4",
            "6ab40d5eabe7218ec04182f461005600c7e3426bddd82cdb405bde9a1e0014b5",
        ),
        (
            "44ebe63375969fec2da67e87e7317946",
            "8LNYD-DVNKU-GYRC-E6GU-3YFD-CT86",
            "c1968cb4c013ea893f1922bb5c39f81e35012c0bd9ce3c01cc2a05873a2499e6",
        ),
        (
            "cb84798c3ca85a674194550a2e96aed8",
            "TF27L-31WN1-E6FH-DMAM-52X5-NFV0",
            "23cf8b7873425fd8efe31dc5b6ab9c357eb98a2a59c82ea1084ca8af58cc480a",
        ),
        (
            "89195c9b79178736203bd9d591ea7c0f",
            "J4DNT-6VT2Y-3LD8-1VV7-AT3U-LW17",
            "59b9b3fa9ec4b806612b8b1fe6f12fcc3903156a58bcf4cae53a8a78dad563d3",
        ),
        (
            "60110f362c6f7a90dd1ef2845f32482f",
            "D08HY-EJDEX-X91Q-8YYA-25YD-K857",
            "4d19162b50dd61536d72c0662dce9d533a1f46137d6db97501ceb171fcbae7dd",
        ),
        (
            "b7608a5fd1fa8500c6095ee152ea4caf",
            "PXH8M-QYJZA-2H1J-H9CV-HN5U-KDN7",
            "6789c28a5a596746af3e7e4d18facb19c1161e4053ccca02a3e65ce838938c0e",
        ),
    ];

    fn raw_from_hex(hex: &str) -> [u8; RAW_LEN] {
        let mut raw = [0u8; RAW_LEN];
        for (i, byte) in raw.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("test vector hex");
        }
        raw
    }

    fn code(text: &str) -> BypassCode {
        BypassCode::parse(text).expect("valid test code")
    }

    #[test]
    fn public_vectors_encode_from_raw() {
        for (raw_hex, text, escrow) in VECTORS {
            let from_raw = BypassCode::from_raw(&raw_from_hex(raw_hex));
            assert_eq!(from_raw.reveal(), text, "{raw_hex}");
            assert_eq!(from_raw.escrow_key_hex(), escrow, "{raw_hex}");
        }
    }

    #[test]
    fn public_vectors_decode_from_text() {
        for (raw_hex, text, escrow) in VECTORS {
            let parsed = code(text);
            assert_eq!(*parsed.to_raw(), raw_from_hex(raw_hex), "{text}");
            assert_eq!(parsed.escrow_key_hex(), escrow, "{text}");
            assert_eq!(parsed.reveal().len(), DASHED_LEN);
            assert_eq!(parsed.reveal_compact(), text.replace('-', ""));
        }
    }

    #[test]
    fn escrow_hash_is_of_raw_bytes_not_text() {
        // docs/mdm.md §5.2: hashing the dashed text gives 99cacb48…, which is wrong.
        let hex = code("3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4").escrow_key_hex();
        assert!(!hex.starts_with("99cacb48"));
        assert_eq!(hex.len(), 64);
        assert_eq!(hex, hex.to_lowercase());
    }

    #[test]
    fn normalises_case_spaces_and_dashes() {
        let canonical = code("3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4");
        for variant in [
            "3um43-puyvy-qyd1-uvcc-hehj-fka4",
            "3UM43PUYVYQYD1UVCCHEHJFKA4",
            "3um43puyvyqyd1uvcchehjfka4",
            "  3UM43 PUYVY QYD1 UVCC HEHJ FKA4 ",
            "3U-M4-3P-UY-VY-QY-D1-UV-CC-HE-HJ-FK-A4",
            "3UM43\u{2013}PUYVY\u{2013}QYD1\u{2013}UVCC\u{2013}HEHJ\u{2013}FKA4",
            "3Um43-pUyVy\tQYD1\nUVCC-HEHJ-FKA4",
        ] {
            let parsed = code(variant);
            assert_eq!(parsed, canonical, "{variant}");
            assert_eq!(parsed.reveal(), "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4");
        }
        let s: BypassCode = "3um43puyvyqyd1uvcchehjfka4".parse().expect("FromStr");
        assert_eq!(s, canonical);
    }

    #[test]
    fn equal_codes_hash_equal() {
        use std::collections::HashSet;
        let mut set = HashSet::new();
        set.insert(code("3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4"));
        assert!(set.contains(&code("3um43puyvyqyd1uvcchehjfka4")));
        assert!(!set.contains(&code("8LNYD-DVNKU-GYRC-E6GU-3YFD-CT86")));
    }

    #[test]
    fn rejects_wrong_lengths() {
        assert_eq!(
            BypassCode::parse("3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA"),
            Err(BypassCodeError::WrongLength { found: 25 })
        );
        assert_eq!(
            BypassCode::parse("3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA40"),
            Err(BypassCodeError::WrongLength { found: 27 })
        );
        assert_eq!(BypassCode::parse(""), Err(BypassCodeError::Empty));
        assert_eq!(BypassCode::parse(" - - "), Err(BypassCodeError::Empty));
    }

    #[test]
    fn rejects_letters_outside_the_alphabet_with_position() {
        for (letter, position) in [('B', 1), ('I', 3), ('O', 7), ('S', 31), ('b', 1), ('o', 7)] {
            let mut chars: Vec<char> = "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4".chars().collect();
            chars[position - 1] = letter;
            let text: String = chars.into_iter().collect();
            assert_eq!(
                BypassCode::parse(&text),
                Err(BypassCodeError::InvalidCharacter {
                    character: letter,
                    position
                }),
                "{letter}@{position}"
            );
        }
        assert_eq!(
            BypassCode::parse("3UM43_PUYVY"),
            Err(BypassCodeError::InvalidCharacter {
                character: '_',
                position: 6
            })
        );
        assert_eq!(
            BypassCode::parse("é"),
            Err(BypassCodeError::InvalidCharacter {
                character: 'é',
                position: 1
            })
        );
    }

    #[test]
    fn rejects_last_symbol_above_seven() {
        for last in ['8', '9', 'A', 'z'] {
            let text = format!("3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA{last}");
            assert_eq!(
                BypassCode::parse(&text),
                Err(BypassCodeError::InvalidLastSymbol { character: last }),
                "{text}"
            );
        }
        for last in '0'..='7' {
            assert!(BypassCode::parse(&format!("3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA{last}")).is_ok());
        }
    }

    #[test]
    fn debug_display_and_masked_never_show_the_whole_code() {
        for (_, text, _) in VECTORS {
            let c = code(text);
            let compact = text.replace('-', "");
            let groups: Vec<&str> = text.split('-').collect();
            let expected_mask = format!("{}-\u{2026}-{}", groups[0], groups[5]);
            assert_eq!(c.masked(), expected_mask);
            assert!(BypassCode::is_masked(&c.masked()));
            assert!(!BypassCode::is_masked(text) && !BypassCode::is_masked(&compact));
            assert_eq!(c.to_string(), expected_mask);
            let debug = format!("{c:?} {c:#?} {:?}", Some(&c));
            for shown in [debug, c.to_string(), c.masked()] {
                assert!(!shown.contains(text), "{shown}");
                assert!(!shown.contains(&compact), "{shown}");
                // The all-zero code's middle groups look like its first one.
                for middle in groups[1..5].iter().filter(|g| !groups[0].contains(**g)) {
                    assert!(!shown.contains(middle), "{shown} shows {middle}");
                }
            }
        }
        assert_eq!(
            code("3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4").to_string(),
            "3UM43-…-FKA4"
        );
    }

    #[test]
    fn error_messages_never_show_the_input() {
        let inputs = [
            "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA",
            "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4X",
            "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA9",
            "3UM43-PUYVY-QYD1-UVCC-HEHO-FKA4",
            "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4!",
        ];
        for input in inputs {
            let err = BypassCode::parse(input).expect_err(input);
            let shown = format!("{err} {err:?}");
            for group in input.split('-') {
                assert!(!shown.contains(group), "{shown} shows {group}");
            }
        }
    }

    #[test]
    fn error_messages_are_precise() {
        let err = BypassCode::parse("3UM43-PUYVY-QYD1-UVCC-HEHO-FKA4").expect_err("O");
        assert_eq!(
            err.to_string(),
            "bypass code has an invalid character 'O' at position 26 \
             (bypass codes never contain B, I, O or S: did you mean 8, 1, 0 or 5?)"
        );
        let err = BypassCode::parse("3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA").expect_err("short");
        assert_eq!(
            err.to_string(),
            "bypass code has 25 symbols, expected 26 (dashes and spaces not counted)"
        );
        let err = BypassCode::parse("3UM43_").expect_err("underscore");
        assert_eq!(
            err.to_string(),
            "bypass code has an invalid character '_' at position 6"
        );
    }

    #[test]
    fn suggests_lookalike_fixes_without_applying_them() {
        // 3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4 has no 0/1/5/8 to mistype except the `1` in QYD1.
        let suggestion =
            suggest_lookalike_fix("3UM43-PUYVY-QYDI-UVCC-HEHJ-FKA4").expect("I→1 suggested");
        assert_eq!(
            suggestion,
            vec![LookalikeCorrection {
                position: 16,
                found: 'I',
                suggested: '1'
            }]
        );
        let suggestion =
            suggest_lookalike_fix("d08hy-ejdex-x9iq-byya-2syd-kbs7").expect("several fixes");
        let fixed: Vec<(char, char)> = suggestion.iter().map(|c| (c.found, c.suggested)).collect();
        assert_eq!(
            fixed,
            vec![('i', '1'), ('b', '8'), ('s', '5'), ('b', '8'), ('s', '5')]
        );
        // Valid codes, hopeless texts and fixes that still fail get no suggestion.
        assert_eq!(
            suggest_lookalike_fix("3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4"),
            None
        );
        assert_eq!(suggest_lookalike_fix("3UM43-PUYVY"), None);
        assert_eq!(
            suggest_lookalike_fix("3UM43-PUYVY-QYDI-UVCC-HEHJ-FKA9"),
            None
        );
    }

    #[test]
    fn raw_round_trip_of_edge_values() {
        for raw in [[0xffu8; RAW_LEN], [0x80; RAW_LEN], [0x01; RAW_LEN]] {
            let c = BypassCode::from_raw(&raw);
            assert_eq!(*c.to_raw(), raw);
            assert_eq!(code(&c.reveal()), c);
        }
        assert_eq!(
            BypassCode::from_raw(&[0xff; RAW_LEN]).reveal(),
            "ZZZZZ-ZZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZ7"
        );
    }
}
