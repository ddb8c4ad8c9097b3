//! Metadata key/value pairs: the value types, their parsing, and typed accessors.

use std::collections::HashMap;

use super::error::{GgufError, Result};
use super::reader::Reader;

/// Arrays nested deeper than this are rejected (bounds the parser's recursion; real files nest
/// at most one level).
pub const MAX_ARRAY_NESTING: usize = 8;

/// A metadata value type id as stored in the file (GGUF spec `gguf_metadata_value_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetadataValueType {
    /// 0: `u8`.
    U8,
    /// 1: `i8`.
    I8,
    /// 2: `u16`.
    U16,
    /// 3: `i16`.
    I16,
    /// 4: `u32`.
    U32,
    /// 5: `i32`.
    I32,
    /// 6: `f32`.
    F32,
    /// 7: bool (one byte, 0 or 1).
    Bool,
    /// 8: UTF-8 string with a `u64` length prefix.
    String,
    /// 9: array (element type, `u64` count, elements).
    Array,
    /// 10: `u64`.
    U64,
    /// 11: `i64`.
    I64,
    /// 12: `f64`.
    F64,
}

impl MetadataValueType {
    /// The type for a stored id, or `None` for ids outside the specification.
    pub fn from_id(id: u32) -> Option<Self> {
        use MetadataValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Lower-case name used in error messages (`"u32"`, `"string"`, ...).
    pub fn name(self) -> &'static str {
        use MetadataValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// Size in bytes of one value of a fixed-size type; `None` for strings and arrays.
    fn fixed_size(self) -> Option<u64> {
        use MetadataValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// bool.
    Bool(bool),
    /// string.
    String(String),
    /// array (homogeneous; possibly of arrays).
    Array(MetadataArray),
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f64`.
    F64(f64),
}

/// A homogeneous metadata array, stored as a typed vector (so a 50k-entry vocabulary is one
/// `Vec<String>`, and a score table one `Vec<f32>`).
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataArray {
    /// Array of `u8`.
    U8(Vec<u8>),
    /// Array of `i8`.
    I8(Vec<i8>),
    /// Array of `u16`.
    U16(Vec<u16>),
    /// Array of `i16`.
    I16(Vec<i16>),
    /// Array of `u32`.
    U32(Vec<u32>),
    /// Array of `i32`.
    I32(Vec<i32>),
    /// Array of `f32`.
    F32(Vec<f32>),
    /// Array of bools.
    Bool(Vec<bool>),
    /// Array of strings.
    String(Vec<String>),
    /// Array of arrays (each inner array has its own element type).
    Array(Vec<MetadataArray>),
    /// Array of `u64`.
    U64(Vec<u64>),
    /// Array of `i64`.
    I64(Vec<i64>),
    /// Array of `f64`.
    F64(Vec<f64>),
}

impl MetadataArray {
    /// The element type.
    pub fn elem_type(&self) -> MetadataValueType {
        use MetadataArray as A;
        use MetadataValueType as T;
        match self {
            A::U8(_) => T::U8,
            A::I8(_) => T::I8,
            A::U16(_) => T::U16,
            A::I16(_) => T::I16,
            A::U32(_) => T::U32,
            A::I32(_) => T::I32,
            A::F32(_) => T::F32,
            A::Bool(_) => T::Bool,
            A::String(_) => T::String,
            A::Array(_) => T::Array,
            A::U64(_) => T::U64,
            A::I64(_) => T::I64,
            A::F64(_) => T::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        use MetadataArray as A;
        match self {
            A::U8(v) => v.len(),
            A::I8(v) => v.len(),
            A::U16(v) => v.len(),
            A::I16(v) => v.len(),
            A::U32(v) => v.len(),
            A::I32(v) => v.len(),
            A::F32(v) => v.len(),
            A::Bool(v) => v.len(),
            A::String(v) => v.len(),
            A::Array(v) => v.len(),
            A::U64(v) => v.len(),
            A::I64(v) => v.len(),
            A::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Type name for messages, e.g. `array<string>` or `array<array<u8>>` (an empty array of
    /// arrays prints as `array<array>`).
    pub fn type_name(&self) -> String {
        match self {
            MetadataArray::Array(inner) => match inner.first() {
                Some(first) => format!("array<{}>", first.type_name()),
                None => "array<array>".to_string(),
            },
            other => format!("array<{}>", other.elem_type().name()),
        }
    }
}

impl MetadataValue {
    /// The stored type.
    pub fn value_type(&self) -> MetadataValueType {
        use MetadataValue as V;
        use MetadataValueType as T;
        match self {
            V::U8(_) => T::U8,
            V::I8(_) => T::I8,
            V::U16(_) => T::U16,
            V::I16(_) => T::I16,
            V::U32(_) => T::U32,
            V::I32(_) => T::I32,
            V::F32(_) => T::F32,
            V::Bool(_) => T::Bool,
            V::String(_) => T::String,
            V::Array(_) => T::Array,
            V::U64(_) => T::U64,
            V::I64(_) => T::I64,
            V::F64(_) => T::F64,
        }
    }

    /// Type name for messages (`u32`, `string`, `array<f32>`, ...).
    pub fn type_name(&self) -> String {
        match self {
            MetadataValue::Array(a) => a.type_name(),
            other => other.value_type().name().to_string(),
        }
    }
}

/// Reads one value of type `ty` at the cursor.
fn read_value(r: &mut Reader<'_>, ty: MetadataValueType, depth: usize) -> Result<MetadataValue> {
    use MetadataValue as V;
    use MetadataValueType as T;
    Ok(match ty {
        T::U8 => V::U8(r.u8("u8 value")?),
        T::I8 => V::I8(r.u8("i8 value")? as i8),
        T::U16 => V::U16(u16::from_le_bytes(fixed(r, "u16 value")?)),
        T::I16 => V::I16(i16::from_le_bytes(fixed(r, "i16 value")?)),
        T::U32 => V::U32(r.u32("u32 value")?),
        T::I32 => V::I32(r.u32("i32 value")? as i32),
        T::F32 => V::F32(f32::from_bits(r.u32("f32 value")?)),
        T::Bool => V::Bool(read_bool(r)?),
        T::String => V::String(r.string("string value")?),
        T::Array => V::Array(read_array(r, depth + 1)?),
        T::U64 => V::U64(r.u64("u64 value")?),
        T::I64 => V::I64(r.u64("i64 value")? as i64),
        T::F64 => V::F64(f64::from_bits(r.u64("f64 value")?)),
    })
}

fn fixed<const N: usize>(r: &mut Reader<'_>, what: &'static str) -> Result<[u8; N]> {
    let mut a = [0u8; N];
    a.copy_from_slice(r.take(N as u64, what)?);
    Ok(a)
}

fn read_bool(r: &mut Reader<'_>) -> Result<bool> {
    let at = r.pos();
    match r.u8("bool value")? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(GgufError::InvalidBool { value, offset: at }),
    }
}

fn read_type(r: &mut Reader<'_>, what: &'static str) -> Result<MetadataValueType> {
    let at = r.pos();
    let id = r.u32(what)?;
    MetadataValueType::from_id(id).ok_or(GgufError::UnknownValueType {
        type_id: id,
        offset: at,
    })
}

/// Reads an array (element type, count, elements); `depth` is its nesting level (1 = top).
fn read_array(r: &mut Reader<'_>, depth: usize) -> Result<MetadataArray> {
    use MetadataArray as A;
    use MetadataValueType as T;
    let start = r.pos();
    if depth > MAX_ARRAY_NESTING {
        return Err(GgufError::NestingTooDeep {
            max: MAX_ARRAY_NESTING,
            offset: start,
        });
    }
    let elem = read_type(r, "array element type")?;
    let count = r.u64("array length")?;
    if let Some(size) = elem.fixed_size() {
        // Fixed-size elements: the whole payload must be in the file before anything is
        // allocated, so the allocation is bounded by the file size.
        let at = r.pos();
        let needed = count.checked_mul(size).ok_or(GgufError::Truncated {
            what: "array elements",
            offset: at,
            needed: u64::MAX,
            len: at + r.remaining(),
        })?;
        let bytes = r.take(needed, "array elements")?;
        return Ok(match elem {
            T::U8 => A::U8(bytes.to_vec()),
            T::I8 => A::I8(bytes.iter().map(|&b| b as i8).collect()),
            T::U16 => A::U16(le_chunks(bytes, u16::from_le_bytes)),
            T::I16 => A::I16(le_chunks(bytes, i16::from_le_bytes)),
            T::U32 => A::U32(le_chunks(bytes, u32::from_le_bytes)),
            T::I32 => A::I32(le_chunks(bytes, i32::from_le_bytes)),
            T::F32 => A::F32(le_chunks(bytes, f32::from_le_bytes)),
            T::U64 => A::U64(le_chunks(bytes, u64::from_le_bytes)),
            T::I64 => A::I64(le_chunks(bytes, i64::from_le_bytes)),
            T::F64 => A::F64(le_chunks(bytes, f64::from_le_bytes)),
            T::Bool => A::Bool(
                bytes
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| match b {
                        0 => Ok(false),
                        1 => Ok(true),
                        value => Err(GgufError::InvalidBool {
                            value,
                            offset: at + i as u64,
                        }),
                    })
                    .collect::<Result<Vec<bool>>>()?,
            ),
            T::String | T::Array => unreachable!("fixed_size is None for these"),
        });
    }
    // Strings (>= 8 bytes each) and arrays (>= 12 bytes each): pre-reserve no more than the
    // remaining bytes could hold; each element consumes bytes, so the loop ends at EOF.
    let cap = count.min(r.remaining() / 8) as usize;
    match elem {
        T::String => {
            let mut v = Vec::with_capacity(cap);
            for _ in 0..count {
                v.push(r.string("array string element")?);
            }
            Ok(A::String(v))
        }
        _ => {
            let mut v = Vec::with_capacity(cap);
            for _ in 0..count {
                v.push(read_array(r, depth + 1)?);
            }
            Ok(A::Array(v))
        }
    }
}

fn le_chunks<T, const N: usize>(bytes: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}

/// The metadata section: key/value pairs in file order with lookup by key.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    entries: Vec<(String, MetadataValue)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// Parses `count` key/value pairs at the cursor.
    pub(crate) fn parse(r: &mut Reader<'_>, count: u64) -> Result<Self> {
        // Each pair takes at least 8 (key length) + 4 (type) + 1 bytes.
        let cap = count.min(r.remaining() / 13) as usize;
        let mut md = Metadata {
            entries: Vec::with_capacity(cap),
            index: HashMap::with_capacity(cap),
        };
        for _ in 0..count {
            let key = r.string("metadata key")?;
            let ty = read_type(r, "metadata value type")?;
            let value = read_value(r, ty, 0)?;
            if md.index.contains_key(&key) {
                return Err(GgufError::DuplicateKey { key });
            }
            md.index.insert(key.clone(), md.entries.len());
            md.entries.push((key, value));
        }
        Ok(md)
    }

    /// All pairs in file order.
    pub fn entries(&self) -> &[(String, MetadataValue)] {
        &self.entries
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// The value of `key`, or [`GgufError::MissingKey`].
    pub fn require(&self, key: &str) -> Result<&MetadataValue> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_string(),
        })
    }

    fn wrong(key: &str, v: &MetadataValue, expected: &'static str) -> GgufError {
        GgufError::WrongType {
            key: key.to_string(),
            found: v.type_name(),
            expected,
        }
    }

    /// The string value of `key`.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.require(key)? {
            MetadataValue::String(s) => Ok(s),
            v => Err(Self::wrong(key, v, "string")),
        }
    }

    /// The array value of `key` (any element type).
    pub fn get_array(&self, key: &str) -> Result<&MetadataArray> {
        match self.require(key)? {
            MetadataValue::Array(a) => Ok(a),
            v => Err(Self::wrong(key, v, "array")),
        }
    }

    /// Any integer value of `key` that is non-negative, widened to `u64` (files disagree on
    /// whether e.g. a context length is `u32` or `u64`).
    pub fn get_uint(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        let n: Option<u64> = match *v {
            MetadataValue::U8(x) => Some(x.into()),
            MetadataValue::U16(x) => Some(x.into()),
            MetadataValue::U32(x) => Some(x.into()),
            MetadataValue::U64(x) => Some(x),
            MetadataValue::I8(x) => u64::try_from(x).ok(),
            MetadataValue::I16(x) => u64::try_from(x).ok(),
            MetadataValue::I32(x) => u64::try_from(x).ok(),
            MetadataValue::I64(x) => u64::try_from(x).ok(),
            _ => None,
        };
        n.ok_or_else(|| Self::wrong(key, v, "non-negative integer"))
    }
}

macro_rules! scalar_getters {
    ($($(#[$doc:meta])* $name:ident => $variant:ident: $ty:ty, $tname:literal;)*) => {
        impl Metadata {
            $(
                $(#[$doc])*
                pub fn $name(&self, key: &str) -> Result<$ty> {
                    match self.require(key)? {
                        MetadataValue::$variant(x) => Ok(*x),
                        v => Err(Self::wrong(key, v, $tname)),
                    }
                }
            )*
        }
    };
}

scalar_getters! {
    /// The `u8` value of `key` (exact type required).
    get_u8 => U8: u8, "u8";
    /// The `i8` value of `key` (exact type required).
    get_i8 => I8: i8, "i8";
    /// The `u16` value of `key` (exact type required).
    get_u16 => U16: u16, "u16";
    /// The `i16` value of `key` (exact type required).
    get_i16 => I16: i16, "i16";
    /// The `u32` value of `key` (exact type required; see [`Metadata::get_uint`]).
    get_u32 => U32: u32, "u32";
    /// The `i32` value of `key` (exact type required).
    get_i32 => I32: i32, "i32";
    /// The `f32` value of `key` (exact type required).
    get_f32 => F32: f32, "f32";
    /// The bool value of `key`.
    get_bool => Bool: bool, "bool";
    /// The `u64` value of `key` (exact type required; see [`Metadata::get_uint`]).
    get_u64 => U64: u64, "u64";
    /// The `i64` value of `key` (exact type required).
    get_i64 => I64: i64, "i64";
    /// The `f64` value of `key` (exact type required).
    get_f64 => F64: f64, "f64";
}

macro_rules! array_getters {
    ($($(#[$doc:meta])* $name:ident => $variant:ident: $ty:ty, $tname:literal;)*) => {
        impl Metadata {
            $(
                $(#[$doc])*
                pub fn $name(&self, key: &str) -> Result<&[$ty]> {
                    match self.require(key)? {
                        MetadataValue::Array(MetadataArray::$variant(v)) => Ok(v),
                        v => Err(Self::wrong(key, v, $tname)),
                    }
                }
            )*
        }
    };
}

array_getters! {
    /// The `array<string>` value of `key` (e.g. `tokenizer.ggml.tokens`).
    get_str_array => String: String, "array<string>";
    /// The `array<f32>` value of `key` (e.g. `tokenizer.ggml.scores`).
    get_f32_array => F32: f32, "array<f32>";
    /// The `array<i32>` value of `key` (e.g. `tokenizer.ggml.token_type`).
    get_i32_array => I32: i32, "array<i32>";
    /// The `array<u32>` value of `key`.
    get_u32_array => U32: u32, "array<u32>";
    /// The `array<u64>` value of `key`.
    get_u64_array => U64: u64, "array<u64>";
}
