//! # arkvale-testkit
//!
//! Helpers that the tests, benches and examples of arkvale-rs share, so that each is written
//! once: [`XorShift`], the seeded generator of their random inputs, and (feature `llama`)
//! the tiny Llama configurations and random weights the model tests run on ([`llama`]).
//!
//! It is a dev-dependency only (`publish = false`); nothing in a crate's normal build may use
//! it (the one exception is `arkvale-tests`, itself a test crate). Without features it depends
//! on nothing; the `llama` feature adds arkvale-model (and so arkvale-core), for the model
//! crate's integration tests and the cross-backend tests. (arkvale-core's unit tests do not use
//! it: with `llama` on, they would link a second arkvale-core.)
//!
//! Library code keeps its own generators (arkvale-model's sampling, arkvale-eval's `rng`):
//! they are part of what those crates ship.

#![warn(missing_docs)]

#[cfg(feature = "llama")]
pub mod llama;
mod rng;

pub use rng::XorShift;
