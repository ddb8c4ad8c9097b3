//! GGUF v2/v3 reader: header, metadata, tensor infos, memory-mapped tensor data, and
//! dequantization to `f32`.
//!
//! A GGUF file (little-endian) is:
//!
//! 1. header: magic `GGUF`, `u32` version, `u64` tensor count, `u64` metadata pair count;
//! 2. metadata pairs: key (`u64` length + UTF-8), `u32` value type, value;
//! 3. tensor infos: name, `u32` dimension count, `u64` dims (innermost first), `u32` ggml type,
//!    `u64` data offset relative to the data section;
//! 4. padding to `general.alignment` (default 32), then the data section.
//!
//! [`GgufFile`] parses 1–3 eagerly and checks every tensor's type, shape and data bounds, so
//! that afterwards reading tensor data cannot fail on bounds. Any malformed input is a
//! [`GgufError`]; nothing panics, and no allocation is sized by a count from the file without
//! first checking it against the bytes that remain.
//!
//! ```no_run
//! use arkvale_model::gguf::GgufFile;
//!
//! let f = GgufFile::open("models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let arch = f.metadata().get_str("general.architecture")?;
//! let n_layer = f.metadata().get_uint(&format!("{arch}.block_count"))?;
//! let vocab = f.metadata().get_str_array("tokenizer.ggml.tokens")?;
//! let info = f.tensor("token_embd.weight").expect("embedding");
//! let emb: Vec<f32> = f.tensor_f32("token_embd.weight")?; // info.dims = [d_model, n_vocab]
//! assert_eq!(emb.len() as u64, info.n_elements);
//! # let _ = (n_layer, vocab);
//! # Ok::<(), arkvale_model::gguf::GgufError>(())
//! ```

mod dequant;
mod error;
mod metadata;
mod reader;
mod tensor;

use std::collections::HashMap;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use arkvale_core::SharedBytes;

pub use dequant::{dequantize, dequantize_into};
pub use error::{GgufError, Result};
pub use metadata::{MAX_ARRAY_NESTING, Metadata, MetadataArray, MetadataValue, MetadataValueType};
pub use tensor::{GgmlType, MAX_DIMS, TensorInfo};

use reader::Reader;

/// The four magic bytes at the start of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// The bytes behind a [`GgufFile`]: a read-only memory map or an owned buffer.
enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for Backing {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file whose tensor data stays in place (memory-mapped or in memory) until a
/// tensor is read.
pub struct GgufFile {
    /// Shared, so that device buffers can keep tensors in place ([`GgufFile::tensor_shared`]).
    bytes: Arc<Backing>,
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("len", &self.bytes.len())
            .field("version", &self.version)
            .field("metadata_pairs", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl GgufFile {
    /// Opens and memory-maps `path`, then parses it.
    ///
    /// The file must not be modified or truncated by anyone while the returned value lives
    /// (see the safety note in the body).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: mapping a file is only unsound if another process (or this one) modifies or
        // truncates it while mapped, which would change or remove bytes under our `&[u8]`. Model
        // files are written once and then only read; we map read-only, and we document on
        // `open` that the file must not be modified while the `GgufFile` lives. This is the same
        // contract every mmap-based model loader (llama.cpp, safetensors) relies on.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Backing::Mmap(map))
    }

    /// Parses a GGUF file held in memory (tests, or files read by other means).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Backing::Owned(bytes))
    }

    fn parse(bytes: Backing) -> Result<Self> {
        let mut r = Reader::new(&bytes);
        let magic = r.take(4, "magic").map_err(|_| GgufError::BadMagic {
            found: bytes[..bytes.len().min(4)].to_vec(),
        })?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic {
                found: magic.to_vec(),
            });
        }
        let version = r.u32("version")?;
        if (2..=3).contains(&version.swap_bytes()) {
            return Err(GgufError::BigEndian {
                version: version.swap_bytes(),
            });
        }
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion { version });
        }
        let tensor_count = r.u64("tensor count")?;
        let kv_count = r.u64("metadata pair count")?;
        let metadata = Metadata::parse(&mut r, kv_count)?;

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(MetadataValue::U32(a)) => u64::from(*a),
            Some(v) => {
                return Err(GgufError::WrongType {
                    key: "general.alignment".into(),
                    found: v.type_name(),
                    expected: "u32",
                });
            }
        };
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(GgufError::BadAlignment { alignment });
        }

        // A tensor info takes at least 8 (name length) + 4 + 4 + 8 bytes.
        let cap = tensor_count.min(r.remaining() / 24) as usize;
        let mut tensors = Vec::with_capacity(cap);
        let mut by_name = HashMap::with_capacity(cap);
        for _ in 0..tensor_count {
            let info = TensorInfo::parse(&mut r)?;
            if by_name.contains_key(&info.name) {
                return Err(GgufError::DuplicateTensor { name: info.name });
            }
            by_name.insert(info.name.clone(), tensors.len());
            tensors.push(info);
        }

        // pos <= len and alignment is a power of two <= 2^32, so this cannot overflow.
        let data_offset = r.pos().next_multiple_of(alignment);
        let len = bytes.len() as u64;
        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(GgufError::MisalignedTensor {
                    name: t.name.clone(),
                    offset: t.offset,
                    alignment,
                });
            }
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.n_bytes));
            match (start, end) {
                (Some(_), Some(end)) if end <= len => {}
                _ => {
                    return Err(GgufError::TensorOutOfBounds {
                        name: t.name.clone(),
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        len,
                    });
                }
            }
        }

        Ok(GgufFile {
            bytes: Arc::new(bytes),
            version,
            metadata,
            tensors,
            by_name,
            alignment,
            data_offset,
        })
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The metadata pairs.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of the tensor called `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// Data-section alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Drops this process's resident copies of the memory-mapped pages holding tensor `name`
    /// (and the partial pages at its ends; `madvise` `MADV_DONTNEED`) once a loader has copied
    /// it onto a device, so that the process never holds the weights twice (the mapped file
    /// and the device buffers). The mapping stays valid: a later read faults the pages back in
    /// from the page cache, unchanged. Advisory: does nothing for in-memory files or off Unix,
    /// and ignores a failing call.
    pub fn release_tensor_pages(&self, name: &str) {
        #[cfg(unix)]
        if let (Backing::Mmap(map), Some(t)) = (&*self.bytes, self.tensor(name)) {
            let data = self.data_of(t);
            let offset = data.as_ptr() as usize - map.as_ptr() as usize;
            // SAFETY: the map is a read-only shared mapping of a file that must not change
            // while mapped (see `open`); after MADV_DONTNEED its pages read back the same
            // bytes from the file, so no borrow of the mapping can observe a change (memmap2
            // aligns the range to pages).
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, data.len())
            };
        }
    }

    /// The raw bytes of tensor `name` (bounds were checked when the file was parsed).
    pub fn tensor_data(&self, name: &str) -> Result<&[u8]> {
        let t = self.require_tensor(name)?;
        Ok(self.data_of(t))
    }

    /// The raw bytes of tensor `name` as a handle that shares the file's mapping (or memory),
    /// for [`arkvale_core::Device::import`]: a device that keeps them in place holds the file
    /// open through it, so nothing is copied.
    pub fn tensor_shared(&self, name: &str) -> Result<SharedBytes> {
        let span = self.span_of(self.require_tensor(name)?);
        let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = self.bytes.clone();
        // The span was checked against the file in `parse`, so this error cannot occur.
        SharedBytes::new(owner, span.clone()).ok_or_else(|| GgufError::TensorOutOfBounds {
            name: name.to_string(),
            start: span.start as u64,
            end: span.end as u64,
            len: self.bytes.len() as u64,
        })
    }

    /// Tensor `name` dequantized to `f32`, `n_elements` long, in ggml order (innermost
    /// dimension fastest).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.require_tensor(name)?;
        dequantize(t.ty, self.data_of(t), t.n_elements).map_err(|e| match e {
            GgufError::UnsupportedType { ty, .. } => GgufError::UnsupportedType {
                name: name.to_string(),
                ty,
            },
            e => e,
        })
    }

    fn require_tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name).ok_or_else(|| GgufError::MissingTensor {
            name: name.to_string(),
        })
    }

    fn data_of(&self, t: &TensorInfo) -> &[u8] {
        &self.bytes[self.span_of(t)]
    }

    /// Where tensor `t`'s bytes lie in the file (checked in `parse`: data_offset + offset +
    /// n_bytes <= len).
    fn span_of(&self, t: &TensorInfo) -> std::ops::Range<usize> {
        let start = (self.data_offset + t.offset) as usize;
        start..start + t.n_bytes as usize
    }
}
