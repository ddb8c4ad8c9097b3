//! The WGSL kernels (one `.wgsl` file per job under `shaders/`, each prefixed with
//! `shaders/common.wgsl`) and their binding signatures, compiled lazily into compute
//! pipelines with explicit bind-group layouts (binding 0 is always the read-only `meta` array
//! of parameters and descriptors).

/// Whether a storage binding is read-only or read-write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    Write,
}

use Access::{Read as R, Write as W};

/// One compute entry point: its file, entry and bindings 1.. (binding 0 is `meta`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    /// `fill.wgsl`.
    Fill,
    /// `bytecopy.wgsl`.
    ByteCopy,
    /// `append.wgsl`.
    Append,
    /// `summarize.wgsl`, cuboid kinds and centroid.
    SummarizePerDim,
    /// `summarize.wgsl`, sphere kinds.
    SummarizeSphere,
    /// `estimate.wgsl`.
    Estimate,
    /// `topk.wgsl`.
    Topk,
    /// `attention.wgsl`.
    Attention,
    /// `finalize.wgsl`.
    Finalize,
    /// `combine.wgsl`.
    Combine,
    /// `weights.wgsl`.
    Weights,
    /// `matmul.wgsl`, `gemv`.
    Gemv,
    /// `matmul.wgsl`, `tiled`.
    GemmTiled,
    /// `elementwise.wgsl`, `silu_mul`.
    SiluMul,
    /// `elementwise.wgsl`, `add`.
    Add,
    /// `elementwise.wgsl`, `add_bias`.
    AddBias,
    /// `rows.wgsl`, `rmsnorm`.
    RmsNorm,
    /// `rows.wgsl`, `argmax`.
    Argmax,
    /// `rope.wgsl`.
    Rope,
    /// `embedding.wgsl`.
    Embedding,
}

/// The prelude every kernel file is compiled with.
pub(crate) const COMMON: &str = include_str!("shaders/common.wgsl");

impl Kernel {
    /// Every kernel (for eager compilation and tests).
    pub(crate) const ALL: [Kernel; 20] = [
        Kernel::Fill,
        Kernel::ByteCopy,
        Kernel::Append,
        Kernel::SummarizePerDim,
        Kernel::SummarizeSphere,
        Kernel::Estimate,
        Kernel::Topk,
        Kernel::Attention,
        Kernel::Finalize,
        Kernel::Combine,
        Kernel::Weights,
        Kernel::Gemv,
        Kernel::GemmTiled,
        Kernel::SiluMul,
        Kernel::Add,
        Kernel::AddBias,
        Kernel::RmsNorm,
        Kernel::Argmax,
        Kernel::Rope,
        Kernel::Embedding,
    ];

    /// The kernel's shader file (without the prelude).
    pub(crate) fn source(self) -> &'static str {
        match self {
            Kernel::Fill => include_str!("shaders/fill.wgsl"),
            Kernel::ByteCopy => include_str!("shaders/bytecopy.wgsl"),
            Kernel::Append => include_str!("shaders/append.wgsl"),
            Kernel::SummarizePerDim | Kernel::SummarizeSphere => {
                include_str!("shaders/summarize.wgsl")
            }
            Kernel::Estimate => include_str!("shaders/estimate.wgsl"),
            Kernel::Topk => include_str!("shaders/topk.wgsl"),
            Kernel::Attention => include_str!("shaders/attention.wgsl"),
            Kernel::Finalize => include_str!("shaders/finalize.wgsl"),
            Kernel::Combine => include_str!("shaders/combine.wgsl"),
            Kernel::Weights => include_str!("shaders/weights.wgsl"),
            Kernel::Gemv | Kernel::GemmTiled => include_str!("shaders/matmul.wgsl"),
            Kernel::SiluMul | Kernel::Add | Kernel::AddBias => {
                include_str!("shaders/elementwise.wgsl")
            }
            Kernel::RmsNorm | Kernel::Argmax => include_str!("shaders/rows.wgsl"),
            Kernel::Rope => include_str!("shaders/rope.wgsl"),
            Kernel::Embedding => include_str!("shaders/embedding.wgsl"),
        }
    }

    /// The entry point.
    pub(crate) fn entry(self) -> &'static str {
        match self {
            Kernel::SummarizePerDim => "per_dim",
            Kernel::SummarizeSphere => "sphere",
            Kernel::Gemv => "gemv",
            Kernel::GemmTiled => "tiled",
            Kernel::SiluMul => "silu_mul",
            Kernel::Add => "add",
            Kernel::AddBias => "add_bias",
            Kernel::RmsNorm => "rmsnorm",
            Kernel::Argmax => "argmax",
            _ => "main",
        }
    }

    /// Access of bindings 1, 2, ... as the shader declares them.
    pub(crate) fn bindings(self) -> &'static [Access] {
        match self {
            Kernel::Fill => &[W],
            Kernel::ByteCopy => &[R, W],
            Kernel::Append => &[W, R, R],
            Kernel::SummarizePerDim | Kernel::SummarizeSphere => &[R, W],
            Kernel::Estimate => &[R, R, W],
            Kernel::Topk => &[R, W],
            Kernel::Attention => &[R, R, R, W, W, W],
            Kernel::Finalize => &[R, R, W],
            Kernel::Combine => &[R, W],
            Kernel::Weights => &[R, R, R, R, W],
            Kernel::Gemv | Kernel::GemmTiled => &[R, R, W],
            Kernel::SiluMul | Kernel::Add | Kernel::AddBias => &[R, R, W],
            Kernel::RmsNorm | Kernel::Argmax => &[R, R, W],
            Kernel::Rope => &[R, W],
            Kernel::Embedding => &[R, W],
        }
    }
}
