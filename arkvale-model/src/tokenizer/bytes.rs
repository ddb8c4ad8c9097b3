//! The byte-level alphabet of GPT-2 style BPE vocabularies.
//!
//! Byte-level BPE works on bytes, but its vocabulary is stored as strings, so every byte is
//! given a printable stand-in character: the printable Latin-1 bytes (`!`..=`~`, `¡`..=`¬`,
//! `®`..=`ÿ`) stand for themselves, and the remaining 68 bytes (control characters, space,
//! DEL, NBSP, soft hyphen...) take the characters U+0100, U+0101, ... in byte order. So a space
//! is `Ġ` (U+0120) and a newline `Ċ` (U+010A).

/// Whether byte `b` is its own stand-in character.
const fn is_self_mapped(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The bytes that are not their own stand-in, in order: byte `SHIFTED[k]` is U+0100 + k.
const SHIFTED: [u8; 68] = {
    let mut t = [0u8; 68];
    let mut b = 0usize;
    let mut k = 0usize;
    while b < 256 {
        if !is_self_mapped(b as u8) {
            t[k] = b as u8;
            k += 1;
        }
        b += 1;
    }
    assert!(k == 68);
    t
};

/// The stand-in character of each byte.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        table[usize::from(b)] = if is_self_mapped(b) {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("U+0100..U+0143 are chars");
            next += 1;
            c
        };
    }
    table
}

/// The byte a stand-in character stands for, if it is one.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let u = u32::from(c);
    match u {
        0..=255 => {
            let b = u as u8;
            is_self_mapped(b).then_some(b)
        }
        256..=323 => Some(SHIFTED[(u - 256) as usize]),
        _ => None,
    }
}

/// The bytes a byte-level token string stands for. A character that is not in the alphabet
/// (which a well-formed vocabulary never has) contributes its own UTF-8 bytes.
pub(crate) fn decode_token_text(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alphabet_is_a_bijection_onto_256_chars() {
        let table = byte_to_char_table();
        let mut seen = std::collections::HashSet::new();
        for (b, &c) in table.iter().enumerate() {
            assert!(seen.insert(c), "{c:?} used twice");
            assert_eq!(char_to_byte(c), Some(b as u8), "byte {b}");
        }
        assert_eq!(table[usize::from(b' ')], 'Ġ');
        assert_eq!(table[usize::from(b'\n')], 'Ċ');
        assert_eq!(table[usize::from(b'A')], 'A');
        assert_eq!(table[0xAD], 'Ń');
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte(' '), None);
    }

    #[test]
    fn token_text_decodes_to_bytes() {
        assert_eq!(decode_token_text("ĠHello"), b" Hello");
        assert_eq!(decode_token_text("Ċ"), b"\n");
        // "é" is C3 A9, whose stand-ins are 'Ã' and '©'.
        assert_eq!(decode_token_text("Ã©"), "é".as_bytes());
    }
}
