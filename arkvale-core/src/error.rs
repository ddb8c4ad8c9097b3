//! The one error type of the ArkVale libraries.

use std::path::PathBuf;

/// Everything that can go wrong in the cache and in a [`crate::Device`].
///
/// Errors are values: bad configuration, exhausted memory tiers and device failures are
/// reported here, never by a panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range or inconsistent with another one.
    #[error("invalid cache configuration: {0}")]
    Config(String),
    /// Two buffers, shapes or descriptors passed to an operation do not agree.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The device KV pool has no free slot for a page that must be resident.
    #[error(
        "device KV pool exhausted: {needed} more page slot(s) needed, {capacity} in total \
         ({slot_bytes} bytes each); raise `device_bytes` or lower the budget / batch size"
    )]
    DevicePoolExhausted {
        /// Slots that were requested and could not be given.
        needed: usize,
        /// Slots in the pool.
        capacity: usize,
        /// Bytes per slot.
        slot_bytes: usize,
    },
    /// The host backup tier is full and no disk spill directory is configured.
    #[error(
        "host backup memory exhausted: {capacity_bytes} bytes hold {capacity_pages} page(s); \
         raise `host_bytes` or set a disk spill directory"
    )]
    HostTierExhausted {
        /// Bytes the host tier may use.
        capacity_bytes: usize,
        /// Pages that fit in it.
        capacity_pages: usize,
    },
    /// Reading or writing the disk spill tier failed.
    #[error("disk spill tier at {path}: {source}")]
    Spill {
        /// The spill file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A sequence id that the cache manager does not know.
    #[error("unknown sequence id {0}")]
    UnknownSequence(u64),
    /// A request the cache manager cannot serve in its current state.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A backend has no kernels for weights of this type (see
    /// [`crate::Device::supports_weight_dtype`]).
    #[error("unsupported weight type {dtype} on the {backend} backend")]
    UnsupportedWeight {
        /// The backend's name.
        backend: String,
        /// The weight type.
        dtype: crate::DType,
    },
    /// A backend reported a failure (driver error, out of device memory, lost device...).
    #[error("device error ({backend}): {message}")]
    Device {
        /// The backend's name.
        backend: String,
        /// What went wrong, in the backend's words.
        message: String,
    },
}

/// Shorthand for results carrying [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A configuration error with the given message.
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }

    /// A shape error with the given message.
    pub fn shape(msg: impl Into<String>) -> Self {
        Error::Shape(msg.into())
    }

    /// A device error from `backend`.
    pub fn device(backend: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Device {
            backend: backend.into(),
            message: message.into(),
        }
    }
}
