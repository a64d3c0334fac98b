//! Nix's base-32 text form of byte strings.
//!
//! Nix prints hashes and store path digests in base 32 with the alphabet
//! `0123456789abcdfghijklmnpqrsvwxyz` (no `e`, `o`, `u`, `t`, so that no
//! digest spells a word) and an unusual bit order: the *last* character
//! holds the lowest five bits of the first byte, i.e. the text is the
//! little-endian number written most significant digit first. Encoding the
//! same bytes therefore gives exactly what `nix hash` and `nix-store` print.
//!
//! ```
//! use bigtop_core::base32;
//! let text = base32::encode(&[0xff, 0x00]);
//! assert_eq!(text, "007z");
//! assert_eq!(base32::decode(&text).unwrap(), vec![0xff, 0x00]);
//! ```

use thiserror::Error;

/// The 32 characters of Nix's base-32 alphabet, in digit order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Reverse table: the digit value of each ASCII byte, or `0xff`.
const DIGITS: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Why a base-32 text did not decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The text holds a character outside the alphabet.
    #[error("invalid character `{character}` at position {position} in base-32 text `{input}`")]
    InvalidCharacter {
        /// The whole text.
        input: String,
        /// The offending character.
        character: char,
        /// Its byte offset.
        position: usize,
    },
    /// The text's length is not the length of any byte string.
    #[error("base-32 text `{input}` has {len} characters, which encodes no whole number of bytes")]
    InvalidLength {
        /// The whole text.
        input: String,
        /// Its length in characters.
        len: usize,
    },
    /// The first character carries bits beyond the last byte, so two texts
    /// would decode to the same bytes; rejecting it keeps the form canonical.
    #[error("base-32 text `{input}` has non-zero padding bits")]
    NonZeroPadding {
        /// The whole text.
        input: String,
    },
}

/// Number of base-32 characters that encode `bytes` bytes.
pub const fn encoded_len(bytes: usize) -> usize {
    if bytes == 0 {
        0
    } else {
        (bytes * 8 - 1) / 5 + 1
    }
}

/// Number of bytes encoded by a text of `chars` characters, if any.
pub const fn decoded_len(chars: usize) -> Option<usize> {
    let bytes = chars * 5 / 8;
    if encoded_len(bytes) == chars {
        Some(bytes)
    } else {
        None
    }
}

/// Encodes `bytes` in Nix's base-32 form.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = vec![0u8; encoded_len(bytes.len())];
    encode_into(bytes, &mut out);
    // The alphabet is ASCII.
    String::from_utf8(out).expect("base-32 text is ASCII")
}

/// Encodes `bytes` in Nix's base-32 form into `out`, which must be
/// exactly [`encoded_len`] bytes long: for hot paths (every store path is
/// printed many times) that should not allocate.
///
/// # Panics
///
/// If `out` has another length.
pub fn encode_into(bytes: &[u8], out: &mut [u8]) {
    let len = encoded_len(bytes.len());
    assert_eq!(out.len(), len, "base-32 output buffer of the wrong length");
    // Character n (counting from the end of the text) holds bits
    // [5n, 5n + 5) of the little-endian number the bytes form.
    for (n, c) in out.iter_mut().rev().enumerate() {
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let low = bytes[i] >> j;
        let high = if j > 3 && i + 1 < bytes.len() {
            bytes[i + 1] << (8 - j)
        } else {
            0
        };
        *c = ALPHABET[((low | high) & 0x1f) as usize];
    }
}

/// Decodes a text in Nix's base-32 form.
pub fn decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    let chars = text.as_bytes();
    let Some(len) = decoded_len(chars.len()) else {
        return Err(DecodeError::InvalidLength {
            input: text.to_owned(),
            len: text.chars().count(),
        });
    };
    let mut out = vec![0u8; len];
    for (position, &c) in chars.iter().enumerate() {
        let digit = DIGITS[c as usize];
        if digit == 0xff {
            return Err(DecodeError::InvalidCharacter {
                input: text.to_owned(),
                character: text[position..].chars().next().unwrap_or('?'),
                position,
            });
        }
        let n = chars.len() - 1 - position;
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        out[i] |= digit << j;
        let carry = if j > 3 { digit >> (8 - j) } else { 0 };
        if i + 1 < len {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return Err(DecodeError::NonZeroPadding {
                input: text.to_owned(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_nix_values() {
        // sha256 of the empty string as Nix prints it (`nix hash file /dev/null --base32`).
        let empty = data_encoding::HEXLOWER
            .decode(b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
            .unwrap();
        assert_eq!(
            encode(&empty),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x1f]), "0z");
    }

    #[test]
    fn rejects_bad_characters_and_lengths() {
        assert_eq!(
            decode("0e"),
            Err(DecodeError::InvalidCharacter {
                input: "0e".into(),
                character: 'e',
                position: 1
            })
        );
        assert!(matches!(
            decode("000"),
            Err(DecodeError::InvalidLength { len: 3, .. })
        ));
        // "z0" would set bits above the single byte.
        assert!(matches!(
            decode("z0"),
            Err(DecodeError::NonZeroPadding { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let text = encode(&bytes);
            prop_assert_eq!(text.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode(&text).unwrap(), bytes);
        }
    }
}
