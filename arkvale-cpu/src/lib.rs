//! # arkvale-cpu
//!
//! `CpuDevice`: the multithreaded CPU implementation of [`arkvale_core::Device`].
