//! Malformed GGUF input: every case is a clear error (checked by variant and message), and
//! random, truncated or bit-flipped files never panic.

use std::path::Path;

use arkvale_model::gguf::{GgufError, GgufFile, MAX_ARRAY_NESTING};
use proptest::prelude::*;

/// A minimal GGUF byte writer for hand-made (and deliberately broken) files.
#[derive(Default, Clone)]
struct B(Vec<u8>);

impl B {
    fn header(version: u32, tensors: u64, kvs: u64) -> Self {
        let mut b = B::default();
        b.0.extend_from_slice(b"GGUF");
        b.u32(version).u64(tensors).u64(kvs);
        b
    }
    fn u8(&mut self, x: u8) -> &mut Self {
        self.0.push(x);
        self
    }
    fn u32(&mut self, x: u32) -> &mut Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn u64(&mut self, x: u64) -> &mut Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    /// A tensor info.
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to `align` then appends `n` data bytes.
    fn data(&mut self, align: usize, n: usize) -> &mut Self {
        while self.0.len() % align != 0 {
            self.0.push(0);
        }
        self.0.extend(std::iter::repeat_n(0x11u8, n));
        self
    }
    fn parse(&self) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes(self.0.clone())
    }
}

fn err(b: &B) -> GgufError {
    b.parse().expect_err("malformed input must be an error")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

#[test]
fn valid_hand_made_file_parses() {
    let mut b = B::header(3, 2, 1);
    b.str("general.alignment").u32(4).u32(64);
    b.tensor("a", &[4], 0, 0).tensor("b", &[32, 2], 2, 64);
    b.data(64, 64 + 36);
    let f = b.parse().unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensor_f32("a").unwrap().len(), 4);
    assert_eq!(f.tensor_f32("b").unwrap().len(), 64);
}

#[test]
fn bad_magic_and_version() {
    let e = GgufFile::from_bytes(b"GGML\x03\0\0\0".to_vec()).unwrap_err();
    assert!(matches!(e, GgufError::BadMagic { .. }));
    assert!(e.to_string().contains("bad magic"), "{e}");
    let e = GgufFile::from_bytes(b"GG".to_vec()).unwrap_err();
    assert!(matches!(e, GgufError::BadMagic { .. }), "{e}");
    let e = GgufFile::from_bytes(Vec::new()).unwrap_err();
    assert!(matches!(e, GgufError::BadMagic { .. }), "{e}");
    for v in [0, 1, 4, u32::MAX] {
        let e = err(&B::header(v, 0, 0));
        assert!(matches!(e, GgufError::UnsupportedVersion { version } if version == v));
        assert!(e.to_string().contains(&format!("version {v}")), "{e}");
    }
    let e = err(&B::header(3u32.swap_bytes(), 0, 0));
    assert!(matches!(e, GgufError::BigEndian { version: 3 }), "{e}");
    assert!(e.to_string().contains("big-endian"), "{e}");
    // Empty but valid files of both versions.
    assert_eq!(B::header(2, 0, 0).parse().unwrap().version(), 2);
    assert_eq!(B::header(3, 0, 0).parse().unwrap().version(), 3);
}

#[test]
fn truncated_header_names_offset() {
    let mut b = B::header(3, 0, 0);
    b.0.truncate(10);
    let e = err(&b);
    assert!(matches!(e, GgufError::Truncated { offset: 8, .. }), "{e}");
    assert!(
        e.to_string()
            .contains("truncated GGUF file: needed 8 bytes for tensor count at offset 8"),
        "{e}"
    );
}

#[test]
fn string_longer_than_file() {
    let mut b = B::header(3, 0, 1);
    b.u64(u64::MAX).0.extend_from_slice(b"key");
    let e = err(&b);
    assert!(
        matches!(
            e,
            GgufError::StringTooLong {
                offset: 24,
                declared: u64::MAX,
                remaining: 3
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("declares length"), "{e}");
}

#[test]
fn huge_counts_do_not_allocate() {
    // 2^60 metadata pairs, 2^60 tensors, 2^60-element arrays: each must fail at EOF, quickly.
    let e = err(&B::header(3, 0, 1 << 60));
    assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
    let e = err(&B::header(3, 1 << 60, 0));
    assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
    for elem in [0u32, 4, 10, 8, 9] {
        let mut b = B::header(3, 0, 1);
        b.str("k").u32(9).u32(elem).u64(1 << 60);
        let e = err(&b);
        assert!(matches!(e, GgufError::Truncated { .. }), "elem {elem}: {e}");
    }
    // count * size overflows u64.
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(9).u32(10).u64(u64::MAX / 2);
    assert!(matches!(err(&b), GgufError::Truncated { .. }));
}

#[test]
fn deep_nesting_is_rejected() {
    let mut b = B::header(3, 0, 1);
    b.str("deep").u32(9);
    for _ in 0..10_000 {
        b.u32(9).u64(1);
    }
    b.u32(0).u64(0);
    let e = err(&b);
    assert!(matches!(e, GgufError::NestingTooDeep { .. }), "{e}");
    // Exactly the maximum is fine.
    let mut b = B::header(3, 0, 1);
    b.str("ok").u32(9);
    for _ in 0..MAX_ARRAY_NESTING - 1 {
        b.u32(9).u64(1);
    }
    b.u32(0).u64(1).u8(7);
    b.parse().unwrap();
}

#[test]
fn bad_value_types_bools_and_utf8() {
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(13).u32(0);
    let e = err(&b);
    assert!(
        matches!(
            e,
            GgufError::UnknownValueType {
                type_id: 13,
                offset: 33
            }
        ),
        "{e}"
    );
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(9).u32(99).u64(0);
    assert!(matches!(
        err(&b),
        GgufError::UnknownValueType { type_id: 99, .. }
    ));
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(7).u8(2);
    assert!(matches!(err(&b), GgufError::InvalidBool { value: 2, .. }));
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(9).u32(7).u64(2).u8(1).u8(5);
    assert!(matches!(err(&b), GgufError::InvalidBool { value: 5, .. }));
    let mut b = B::header(3, 0, 1);
    b.u64(2).0.extend_from_slice(&[0xC3, 0x28]);
    b.u32(0).u8(0);
    assert!(matches!(err(&b), GgufError::InvalidUtf8 { offset: 32 }));
}

#[test]
fn duplicate_keys_and_tensors() {
    let mut b = B::header(3, 0, 2);
    b.str("k").u32(0).u8(1).str("k").u32(0).u8(2);
    let e = err(&b);
    assert!(
        matches!(e, GgufError::DuplicateKey { ref key } if key == "k"),
        "{e}"
    );
    let mut b = B::header(3, 2, 0);
    b.tensor("t", &[1], 0, 0)
        .tensor("t", &[1], 0, 32)
        .data(32, 64);
    assert!(matches!(err(&b), GgufError::DuplicateTensor { .. }));
}

#[test]
fn bad_alignment() {
    for a in [0u32, 3, 48] {
        let mut b = B::header(3, 0, 1);
        b.str("general.alignment").u32(4).u32(a);
        let e = err(&b);
        assert!(matches!(e, GgufError::BadAlignment { .. }), "{a}: {e}");
    }
    let mut b = B::header(3, 0, 1);
    b.str("general.alignment").u32(10).u64(32);
    let e = err(&b);
    assert_eq!(
        e.to_string(),
        "metadata key \"general.alignment\" has type u64, expected u32"
    );
}

#[test]
fn bad_tensor_infos() {
    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[1], 31, 0).data(32, 4);
    let e = err(&b);
    assert!(
        matches!(e, GgufError::UnknownGgmlType { type_id: 31, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("unknown ggml type 31"), "{e}");

    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[1 << 32, 1 << 32], 0, 0);
    let e = err(&b);
    assert!(matches!(e, GgufError::DimsOverflow { .. }), "{e}");
    // Elements fit but bytes overflow.
    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[1 << 62], 0, 0);
    assert!(matches!(err(&b), GgufError::DimsOverflow { .. }));

    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[1, 1, 1, 1, 1], 0, 0);
    assert!(matches!(err(&b), GgufError::TooManyDims { n_dims: 5, .. }));
    let mut b = B::header(3, 1, 0);
    b.str("t").u32(u32::MAX);
    assert!(matches!(err(&b), GgufError::TooManyDims { .. }));

    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[16, 2], 2, 0).data(32, 36);
    let e = err(&b);
    assert!(
        matches!(
            e,
            GgufError::BadBlockShape {
                ne0: 16,
                block: 32,
                ..
            }
        ),
        "{e}"
    );

    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[4], 0, 8).data(32, 64);
    assert!(matches!(
        err(&b),
        GgufError::MisalignedTensor { offset: 8, .. }
    ));

    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[8], 0, 0).data(32, 31);
    let e = err(&b);
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
    assert!(e.to_string().contains("out of bounds"), "{e}");

    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[8], 0, u64::MAX - 31).data(32, 32);
    assert!(matches!(err(&b), GgufError::TensorOutOfBounds { .. }));
}

#[test]
fn every_truncation_of_the_fixtures_is_an_error() {
    for name in ["metadata.gguf.bin", "quants.gguf.bin", "aligned64.gguf.bin"] {
        let bytes = fixture(name);
        let full = GgufFile::from_bytes(bytes.clone()).unwrap();
        let data_end = full
            .tensors()
            .iter()
            .map(|t| full.data_offset() + t.offset + t.n_bytes)
            .max()
            .unwrap();
        for len in 0..bytes.len() {
            let r = GgufFile::from_bytes(bytes[..len].to_vec());
            if (len as u64) < data_end {
                assert!(r.is_err(), "{name} truncated to {len} bytes parsed");
            }
        }
    }
}

/// Parses, and on success reads every tensor: nothing may panic.
fn exercise(bytes: Vec<u8>) {
    if let Ok(f) = GgufFile::from_bytes(bytes) {
        let names: Vec<String> = f.tensors().iter().map(|t| t.name.clone()).collect();
        for n in names {
            let _ = f.tensor_f32(&n);
        }
        let md = f.metadata();
        for (k, _) in md.entries() {
            let _ = md.get_str(k);
            let _ = md.get_uint(k);
            let _ = md.get_str_array(k);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512), v in 2u32..4) {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&v.to_le_bytes());
        bytes.extend_from_slice(&tail);
        exercise(bytes);
    }

    #[test]
    fn small_counts_with_random_body_never_panic(
        tensors in 0u64..4, kvs in 0u64..4, body in proptest::collection::vec(any::<u8>(), 0..512)
    ) {
        let mut b = B::header(3, tensors, kvs);
        b.0.extend_from_slice(&body);
        exercise(b.0);
    }

    #[test]
    fn bit_flipped_fixtures_never_panic(
        which in 0usize..3,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..8),
    ) {
        let name = ["metadata.gguf.bin", "quants.gguf.bin", "aligned64.gguf.bin"][which];
        let mut bytes = fixture(name);
        // Flip only in the header / metadata / tensor-info part, where structure lives.
        let head = GgufFile::from_bytes(bytes.clone()).unwrap().data_offset() as usize;
        for (i, bit) in flips {
            let at = i.index(head);
            bytes[at] ^= 1 << bit;
        }
        exercise(bytes);
    }

    #[test]
    fn overwritten_u64_fields_never_panic(
        which in 0usize..3,
        at in any::<prop::sample::Index>(),
        value in prop_oneof![Just(u64::MAX), Just(1u64 << 32), Just(1u64 << 62), any::<u64>(), 0u64..64],
    ) {
        let name = ["metadata.gguf.bin", "quants.gguf.bin", "aligned64.gguf.bin"][which];
        let mut bytes = fixture(name);
        let head = GgufFile::from_bytes(bytes.clone()).unwrap().data_offset() as usize;
        let at = at.index(head - 8);
        bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        exercise(bytes);
    }
}
