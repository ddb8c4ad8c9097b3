//! The one error type of the GGUF reader.

use std::path::PathBuf;

/// Everything that can go wrong while opening, parsing or reading a GGUF file.
///
/// Every variant names what was wrong and, where it applies, where in the file (a byte offset)
/// or which metadata key / tensor. Malformed input always ends up here: the reader never panics
/// on file contents and never allocates more than the file's own size justifies.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or memory-mapped.
    #[error("cannot read GGUF file {path}: {source}")]
    Io {
        /// The path that was opened.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: bad magic {found:02x?} at offset 0 (expected \"GGUF\")")]
    BadMagic {
        /// The bytes found (fewer than four if the file is shorter).
        found: Vec<u8>,
    },
    /// The header's version is not 2 or 3.
    #[error("unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion {
        /// The version found in the header.
        version: u32,
    },
    /// The header's version reads as 2 or 3 only when byte-swapped: a big-endian file.
    #[error(
        "big-endian GGUF (version {version}) is not supported; only little-endian files are read"
    )]
    BigEndian {
        /// The version, byte-swapped to its intended value.
        version: u32,
    },
    /// A read ran past the end of the file.
    #[error(
        "truncated GGUF file: needed {needed} bytes for {what} at offset {offset}, file has {len} bytes"
    )]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Offset at which the read started.
        offset: u64,
        /// Bytes the read needed.
        needed: u64,
        /// Total file length.
        len: u64,
    },
    /// A string's declared length exceeds what is left of the file.
    #[error(
        "string at offset {offset} declares length {declared}, but only {remaining} bytes remain in the file"
    )]
    StringTooLong {
        /// Offset of the string's length prefix.
        offset: u64,
        /// The declared length.
        declared: u64,
        /// Bytes remaining after the length prefix.
        remaining: u64,
    },
    /// A string is not valid UTF-8.
    #[error("string at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Offset of the string's bytes.
        offset: u64,
    },
    /// A metadata value type id outside the GGUF specification.
    #[error("unknown metadata value type {type_id} at offset {offset}")]
    UnknownValueType {
        /// The type id found.
        type_id: u32,
        /// Where it was found.
        offset: u64,
    },
    /// A bool metadata value that is neither 0 nor 1.
    #[error("invalid bool byte {value} at offset {offset}")]
    InvalidBool {
        /// The byte found.
        value: u8,
        /// Where it was found.
        offset: u64,
    },
    /// Arrays nested deeper than the reader accepts.
    #[error("metadata arrays nested deeper than {max} levels at offset {offset}")]
    NestingTooDeep {
        /// The maximum depth accepted.
        max: usize,
        /// Where the too-deep array starts.
        offset: u64,
    },
    /// The same metadata key appears twice.
    #[error("duplicate metadata key {key:?}")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
    /// A metadata key the caller asked for is absent.
    #[error("missing metadata key {key:?}")]
    MissingKey {
        /// The key asked for.
        key: String,
    },
    /// A metadata key has another type than the caller asked for.
    #[error("metadata key {key:?} has type {found}, expected {expected}")]
    WrongType {
        /// The key asked for.
        key: String,
        /// The type it has in the file.
        found: String,
        /// The type the caller asked for.
        expected: &'static str,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("invalid general.alignment {alignment}: must be a non-zero power of two")]
    BadAlignment {
        /// The alignment found.
        alignment: u64,
    },
    /// A tensor has more dimensions than ggml supports.
    #[error("tensor {name:?} has {n_dims} dimensions, at most {max} are supported")]
    TooManyDims {
        /// Tensor name.
        name: String,
        /// Dimension count found.
        n_dims: u32,
        /// The maximum.
        max: u32,
    },
    /// A tensor's element count (or byte size) does not fit in 64 bits.
    #[error("tensor {name:?}: product of dims {dims:?} overflows")]
    DimsOverflow {
        /// Tensor name.
        name: String,
        /// The dims as stored.
        dims: Vec<u64>,
    },
    /// A ggml type id that this reader does not know at all.
    #[error("tensor {name:?} has unknown ggml type {type_id}")]
    UnknownGgmlType {
        /// Tensor name.
        name: String,
        /// The type id found.
        type_id: u32,
    },
    /// The first dimension of a block-quantized tensor is not a multiple of its block size.
    #[error(
        "tensor {name:?} of type {ty}: first dimension {ne0} is not a multiple of the block size {block}"
    )]
    BadBlockShape {
        /// Tensor name.
        name: String,
        /// Its type name.
        ty: &'static str,
        /// The first (innermost) dimension.
        ne0: u64,
        /// The type's block size.
        block: u64,
    },
    /// A tensor's data offset is not a multiple of the file's alignment.
    #[error("tensor {name:?}: data offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        /// Tensor name.
        name: String,
        /// Offset relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor's data extends past the end of the file.
    #[error("tensor {name:?}: data [{start}, {end}) is out of bounds of the {len}-byte file")]
    TensorOutOfBounds {
        /// Tensor name.
        name: String,
        /// Absolute start offset of its data.
        start: u64,
        /// Absolute end offset (exclusive).
        end: u64,
        /// File length.
        len: u64,
    },
    /// The same tensor name appears twice.
    #[error("duplicate tensor name {name:?}")]
    DuplicateTensor {
        /// The repeated name.
        name: String,
    },
    /// A tensor the caller asked for is absent.
    #[error("no tensor named {name:?} in the file")]
    MissingTensor {
        /// The name asked for.
        name: String,
    },
    /// A known ggml type that this reader cannot dequantize.
    #[error("tensor {name:?}: dequantization of ggml type {ty} is not supported")]
    UnsupportedType {
        /// Tensor name (empty when dequantizing raw bytes).
        name: String,
        /// The type's name.
        ty: &'static str,
    },
    /// A raw byte slice handed to [`dequantize`](super::dequantize) has the wrong length.
    #[error("dequantize {ty}: {n} elements need {expected} bytes, got {got}")]
    BadDataLength {
        /// The type's name.
        ty: &'static str,
        /// Elements asked for.
        n: u64,
        /// Bytes those elements occupy.
        expected: u64,
        /// Bytes given.
        got: u64,
    },
}

/// Result alias of the GGUF reader.
pub type Result<T> = std::result::Result<T, GgufError>;
