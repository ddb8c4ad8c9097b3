//! The GGUF reader against fixture files written by gguf-py (see
//! `tests/fixtures/make_fixtures.py`): header fields, tensor infos and offsets as gguf-py's own
//! reader sees them, every metadata pair as written, and every dequantized value bit-exact
//! against `gguf.quants.dequantize`.

use std::path::{Path, PathBuf};

use arkvale_model::gguf::{GgmlType, GgufError, GgufFile, MetadataArray, MetadataValue};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn file_names(exp: &Value) -> Vec<String> {
    exp["files"].as_object().unwrap().keys().cloned().collect()
}

#[test]
fn header_and_tensor_infos_match_gguf_py() {
    let exp = expected();
    let names = file_names(&exp);
    assert_eq!(names.len(), 3);
    for name in names {
        let e = &exp["files"][&name];
        let f = GgufFile::open(fixtures().join(&name)).unwrap();
        assert_eq!(
            u64::from(f.version()),
            e["version"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(f.alignment(), e["alignment"].as_u64().unwrap(), "{name}");
        assert_eq!(
            f.data_offset(),
            e["data_offset"].as_u64().unwrap(),
            "{name}"
        );
        let et = e["tensors"].as_object().unwrap();
        assert_eq!(f.tensors().len(), et.len(), "{name}");
        for t in f.tensors() {
            let x = &et[&t.name];
            assert_eq!(
                t.ty.name(),
                x["type"].as_str().unwrap(),
                "{name}/{}",
                t.name
            );
            assert_eq!(u64::from(t.ty.id()), x["type_id"].as_u64().unwrap());
            let dims: Vec<u64> = x["dims"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            assert_eq!(t.dims, dims, "{name}/{}", t.name);
            assert_eq!(t.n_elements, x["n_elements"].as_u64().unwrap());
            assert_eq!(t.n_bytes, x["n_bytes"].as_u64().unwrap());
            assert_eq!(
                f.data_offset() + t.offset,
                x["data_offset"].as_u64().unwrap(),
                "{name}/{}",
                t.name
            );
            assert_eq!(f.tensor_data(&t.name).unwrap().len() as u64, t.n_bytes);
        }
    }
}

/// Dequantizes every tensor with expected values and compares bit patterns exactly.
#[test]
fn dequantization_is_bit_exact_against_gguf_py() {
    let exp = expected();
    let mut checked_types = std::collections::BTreeSet::new();
    for name in file_names(&exp) {
        let f = GgufFile::open(fixtures().join(&name)).unwrap();
        for (tname, x) in exp["files"][&name]["tensors"].as_object().unwrap() {
            let Some(bits) = x["f32_bits"].as_array() else {
                continue;
            };
            let got = f.tensor_f32(tname).unwrap();
            assert_eq!(got.len(), bits.len(), "{name}/{tname}");
            for (i, (g, b)) in got.iter().zip(bits).enumerate() {
                let want = b.as_u64().unwrap() as u32;
                assert_eq!(
                    g.to_bits(),
                    want,
                    "{name}/{tname}[{i}]: got {g}, want {}",
                    f32::from_bits(want)
                );
            }
            checked_types.insert(f.tensor(tname).unwrap().ty.name());
        }
    }
    let want: std::collections::BTreeSet<&str> = [
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K",
    ]
    .into_iter()
    .collect();
    assert_eq!(checked_types, want);
}

#[test]
fn unsupported_type_is_a_clear_error() {
    let f = GgufFile::open(fixtures().join("quants.gguf.bin")).unwrap();
    let t = f.tensor("q2_k_unsupported").unwrap();
    assert_eq!(t.ty, GgmlType::Q2_K);
    assert!(!t.ty.can_dequantize());
    let err = f.tensor_f32("q2_k_unsupported").unwrap_err();
    assert!(matches!(err, GgufError::UnsupportedType { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("q2_k_unsupported") && msg.contains("Q2_K"),
        "{msg}"
    );
    // Raw bytes are still available.
    assert_eq!(f.tensor_data("q2_k_unsupported").unwrap().len(), 84);
    let err = f.tensor_f32("nope").unwrap_err();
    assert_eq!(err.to_string(), "no tensor named \"nope\" in the file");
}

/// Compares a parsed value with its JSON description from make_fixtures.py.
fn check_value(key: &str, got: &MetadataValue, want: &Value) {
    let ty = want["type"].as_str().unwrap();
    assert_eq!(got.value_type().name(), ty, "{key}");
    match got {
        MetadataValue::Array(a) => check_array(key, a, want),
        scalar => check_scalar(key, scalar, &want["value"]),
    }
}

fn check_array(key: &str, a: &MetadataArray, want: &Value) {
    assert_eq!(
        a.elem_type().name(),
        want["elem"].as_str().unwrap(),
        "{key}"
    );
    let items = want["items"].as_array().unwrap();
    assert_eq!(a.len(), items.len(), "{key}");
    for (i, w) in items.iter().enumerate() {
        let k = format!("{key}[{i}]");
        let v = match a {
            MetadataArray::U8(v) => MetadataValue::U8(v[i]),
            MetadataArray::I8(v) => MetadataValue::I8(v[i]),
            MetadataArray::U16(v) => MetadataValue::U16(v[i]),
            MetadataArray::I16(v) => MetadataValue::I16(v[i]),
            MetadataArray::U32(v) => MetadataValue::U32(v[i]),
            MetadataArray::I32(v) => MetadataValue::I32(v[i]),
            MetadataArray::F32(v) => MetadataValue::F32(v[i]),
            MetadataArray::Bool(v) => MetadataValue::Bool(v[i]),
            MetadataArray::String(v) => MetadataValue::String(v[i].clone()),
            MetadataArray::U64(v) => MetadataValue::U64(v[i]),
            MetadataArray::I64(v) => MetadataValue::I64(v[i]),
            MetadataArray::F64(v) => MetadataValue::F64(v[i]),
            MetadataArray::Array(v) => {
                check_array(&k, &v[i], w);
                continue;
            }
        };
        check_scalar(&k, &v, w);
    }
}

fn check_scalar(key: &str, got: &MetadataValue, want: &Value) {
    match got {
        MetadataValue::U8(x) => assert_eq!(u64::from(*x), want.as_u64().unwrap(), "{key}"),
        MetadataValue::U16(x) => assert_eq!(u64::from(*x), want.as_u64().unwrap(), "{key}"),
        MetadataValue::U32(x) => assert_eq!(u64::from(*x), want.as_u64().unwrap(), "{key}"),
        MetadataValue::U64(x) => assert_eq!(*x, want.as_u64().unwrap(), "{key}"),
        MetadataValue::I8(x) => assert_eq!(i64::from(*x), want.as_i64().unwrap(), "{key}"),
        MetadataValue::I16(x) => assert_eq!(i64::from(*x), want.as_i64().unwrap(), "{key}"),
        MetadataValue::I32(x) => assert_eq!(i64::from(*x), want.as_i64().unwrap(), "{key}"),
        MetadataValue::I64(x) => assert_eq!(*x, want.as_i64().unwrap(), "{key}"),
        MetadataValue::F32(x) => {
            assert_eq!(
                u64::from(x.to_bits()),
                want["f32_bits"].as_u64().unwrap(),
                "{key}"
            )
        }
        MetadataValue::F64(x) => {
            let bits: u64 = want["f64_bits"].as_str().unwrap().parse().unwrap();
            assert_eq!(x.to_bits(), bits, "{key}")
        }
        MetadataValue::Bool(x) => assert_eq!(*x, want.as_bool().unwrap(), "{key}"),
        MetadataValue::String(s) => assert_eq!(s, want.as_str().unwrap(), "{key}"),
        MetadataValue::Array(_) => unreachable!("arrays go through check_array"),
    }
}

#[test]
fn every_metadata_pair_matches_what_was_written() {
    let exp = expected();
    let mut types_seen = std::collections::BTreeSet::new();
    for name in file_names(&exp) {
        let f = GgufFile::open(fixtures().join(&name)).unwrap();
        let want = exp["files"][&name]["metadata"].as_array().unwrap();
        let md = f.metadata();
        assert_eq!(md.len(), want.len(), "{name}");
        for ((key, got), w) in md.entries().iter().zip(want) {
            assert_eq!(key, w[0].as_str().unwrap(), "{name}: key order");
            check_value(key, got, &w[1]);
            assert_eq!(md.get(key), Some(got));
            types_seen.insert(got.type_name());
        }
    }
    // The metadata fixture covers every value type, arrays of every type, and nesting.
    for t in [
        "u8",
        "i8",
        "u16",
        "i16",
        "u32",
        "i32",
        "f32",
        "bool",
        "string",
        "u64",
        "i64",
        "f64",
        "array<u8>",
        "array<bool>",
        "array<string>",
        "array<f64>",
        "array<array<i32>>",
        "array<array<string>>",
        "array<array<array<f32>>>",
    ] {
        assert!(
            types_seen.contains(t),
            "fixture lacks a {t} value: {types_seen:?}"
        );
    }
}

#[test]
fn typed_accessors() {
    let f = GgufFile::open(fixtures().join("metadata.gguf.bin")).unwrap();
    let md = f.metadata();
    assert_eq!(md.get_u8("t.u8").unwrap(), 200);
    assert_eq!(md.get_i8("t.i8").unwrap(), -100);
    assert_eq!(md.get_u16("t.u16").unwrap(), 60000);
    assert_eq!(md.get_i16("t.i16").unwrap(), -30000);
    assert_eq!(md.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(md.get_i32("t.i32").unwrap(), -2_000_000_000);
    assert_eq!(md.get_f32("t.f32").unwrap(), 1.2345f32);
    assert!(md.get_bool("t.bool_true").unwrap());
    assert!(!md.get_bool("t.bool_false").unwrap());
    assert_eq!(md.get_str("t.string").unwrap(), "héllo, ▁wörld Ġ 🦀");
    assert_eq!(md.get_str("t.string_empty").unwrap(), "");
    assert_eq!(md.get_u64("t.u64").unwrap(), 18_000_000_000_000_000_000);
    assert_eq!(md.get_i64("t.i64").unwrap(), -9_000_000_000_000_000_000);
    assert_eq!(md.get_f64("t.f64").unwrap(), -6.789012345678901);
    assert_eq!(md.get_str("general.architecture").unwrap(), "fixture");
    assert_eq!(
        md.get_str_array("arr.string").unwrap(),
        ["<s>", "</s>", "▁the", "Ġworld", "", "ü"]
    );
    assert_eq!(md.get_f32_array("arr.f32").unwrap(), [0.5, -1.25, 1e-3]);
    assert_eq!(md.get_i32_array("arr.i32").unwrap(), [-7, 0, 7]);
    assert_eq!(md.get_u32_array("arr.u32").unwrap(), [0, 1, u32::MAX]);
    assert_eq!(md.get_u64_array("arr.u64").unwrap(), [0, u64::MAX]);
    assert_eq!(md.get_array("arr.nested").unwrap().len(), 3);
    // Lenient unsigned access.
    assert_eq!(md.get_uint("t.u8").unwrap(), 200);
    assert_eq!(md.get_uint("t.u32").unwrap(), 4_000_000_000);
    assert!(md.get_uint("t.i8").is_err());

    let e = md.get_u32("no.such.key").unwrap_err();
    assert_eq!(e.to_string(), "missing metadata key \"no.such.key\"");
    let e = md.get_u32("t.u64").unwrap_err();
    assert_eq!(
        e.to_string(),
        "metadata key \"t.u64\" has type u64, expected u32"
    );
    let e = md.get_str_array("arr.nested").unwrap_err();
    assert_eq!(
        e.to_string(),
        "metadata key \"arr.nested\" has type array<array<i32>>, expected array<string>"
    );
    let e = md.get_str("arr.string").unwrap_err();
    assert!(
        e.to_string()
            .contains("has type array<string>, expected string")
    );
}

#[test]
fn from_bytes_equals_open_and_v2_parses() {
    let path = fixtures().join("quants.gguf.bin");
    let bytes = std::fs::read(&path).unwrap();
    let a = GgufFile::open(&path).unwrap();
    let b = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(a.tensors(), b.tensors());
    assert_eq!(
        a.tensor_f32("q6_k_raw").unwrap(),
        b.tensor_f32("q6_k_raw").unwrap()
    );
    // v2 has the same layout as v3 (v3 only added big-endian files, which we do not read).
    let mut v2 = bytes.clone();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    let c = GgufFile::from_bytes(v2).unwrap();
    assert_eq!(c.version(), 2);
    assert_eq!(c.tensors(), a.tensors());
    assert_eq!(
        c.tensor_f32("q4_k_raw").unwrap(),
        a.tensor_f32("q4_k_raw").unwrap()
    );
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let e = GgufFile::open("/nonexistent/model.gguf").unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/model.gguf"), "{e}");
}
