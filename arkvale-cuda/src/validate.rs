//! Descriptor checks: the rules every backend shares, in [`arkvale_core::validate`].

pub(crate) use arkvale_core::validate::*;
