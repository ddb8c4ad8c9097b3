//! The weights of a Llama-family decoder: where they come from (a GGUF file or host vectors)
//! and how they live on the device.

use arkvale_core::{Buffer, DType, Device, DeviceExt};

use super::{LlamaConfig, LlamaError, Result};
use crate::gguf::GgufFile;

/// One tensor of the model, named independently of the file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tensor {
    Embedding,
    OutputNorm,
    Output,
    AttnNorm(usize),
    Q(usize),
    K(usize),
    V(usize),
    QBias(usize),
    KBias(usize),
    VBias(usize),
    O(usize),
    FfnNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
}

impl Tensor {
    /// The tensor's name in llama.cpp's GGUF files.
    pub(crate) fn gguf_name(self) -> String {
        match self {
            Tensor::Embedding => "token_embd.weight".into(),
            Tensor::OutputNorm => "output_norm.weight".into(),
            Tensor::Output => "output.weight".into(),
            Tensor::AttnNorm(l) => format!("blk.{l}.attn_norm.weight"),
            Tensor::Q(l) => format!("blk.{l}.attn_q.weight"),
            Tensor::K(l) => format!("blk.{l}.attn_k.weight"),
            Tensor::V(l) => format!("blk.{l}.attn_v.weight"),
            Tensor::QBias(l) => format!("blk.{l}.attn_q.bias"),
            Tensor::KBias(l) => format!("blk.{l}.attn_k.bias"),
            Tensor::VBias(l) => format!("blk.{l}.attn_v.bias"),
            Tensor::O(l) => format!("blk.{l}.attn_output.weight"),
            Tensor::FfnNorm(l) => format!("blk.{l}.ffn_norm.weight"),
            Tensor::Gate(l) => format!("blk.{l}.ffn_gate.weight"),
            Tensor::Up(l) => format!("blk.{l}.ffn_up.weight"),
            Tensor::Down(l) => format!("blk.{l}.ffn_down.weight"),
        }
    }

    /// `[rows, cols]` in PyTorch order (a vector is `[1, n]`).
    pub(crate) fn shape(self, c: &LlamaConfig) -> [usize; 2] {
        let (d, kv) = (c.d_model, c.kv_heads * c.head_dim);
        match self {
            Tensor::Embedding | Tensor::Output => [c.vocab, d],
            Tensor::OutputNorm | Tensor::AttnNorm(_) | Tensor::FfnNorm(_) | Tensor::QBias(_) => {
                [1, d]
            }
            Tensor::KBias(_) | Tensor::VBias(_) => [1, kv],
            Tensor::Q(_) | Tensor::O(_) => [d, d],
            Tensor::K(_) | Tensor::V(_) => [kv, d],
            Tensor::Gate(_) | Tensor::Up(_) => [c.d_ff, d],
            Tensor::Down(_) => [d, c.d_ff],
        }
    }

    /// Norm weights and biases: vectors, one dimension in GGUF, always stored as f32.
    fn is_vector(self) -> bool {
        matches!(
            self,
            Tensor::OutputNorm
                | Tensor::AttnNorm(_)
                | Tensor::FfnNorm(_)
                | Tensor::QBias(_)
                | Tensor::KBias(_)
                | Tensor::VBias(_)
        )
    }
}

/// The weights of one decoder layer on the host, f32, PyTorch layout (`W [out, in]`
/// row-major, as GGUF stores them), Q/K rows in the order the RoPE style expects (GGUF files:
/// permuted for [`arkvale_core::RopeStyle::Interleaved`]).
#[derive(Debug, Clone, Default)]
pub struct HostLayer {
    /// RMSNorm weight before attention, `[d_model]`.
    pub attn_norm: Vec<f32>,
    /// Query projection, `[d_model, d_model]`.
    pub wq: Vec<f32>,
    /// Key projection, `[kv_heads * head_dim, d_model]`.
    pub wk: Vec<f32>,
    /// Value projection, `[kv_heads * head_dim, d_model]`.
    pub wv: Vec<f32>,
    /// Query projection bias, `[d_model]` (same row order as `wq`); empty unless
    /// `LlamaConfig::qkv_bias`.
    pub bq: Vec<f32>,
    /// Key projection bias, `[kv_heads * head_dim]`; empty unless `LlamaConfig::qkv_bias`.
    pub bk: Vec<f32>,
    /// Value projection bias, `[kv_heads * head_dim]`; empty unless `LlamaConfig::qkv_bias`.
    pub bv: Vec<f32>,
    /// Attention output projection, `[d_model, d_model]`.
    pub wo: Vec<f32>,
    /// RMSNorm weight before the feed-forward network, `[d_model]`.
    pub ffn_norm: Vec<f32>,
    /// Gate projection, `[d_ff, d_model]`.
    pub w_gate: Vec<f32>,
    /// Up projection, `[d_ff, d_model]`.
    pub w_up: Vec<f32>,
    /// Down projection, `[d_model, d_ff]`.
    pub w_down: Vec<f32>,
}

/// All weights of a model on the host in f32 — for models built in code (tests, other file
/// formats); GGUF files are loaded tensor by tensor without this intermediate copy.
#[derive(Debug, Clone, Default)]
pub struct LlamaHostWeights {
    /// Token embedding, `[vocab, d_model]`.
    pub embedding: Vec<f32>,
    /// Decoder layers.
    pub layers: Vec<HostLayer>,
    /// Final RMSNorm weight, `[d_model]`.
    pub output_norm: Vec<f32>,
    /// Output projection `[vocab, d_model]`; `None` when tied to the embedding.
    pub output: Option<Vec<f32>>,
}

impl LlamaHostWeights {
    /// Moves tensor `t` out (leaving an empty vector behind).
    pub(crate) fn take(&mut self, t: Tensor) -> Result<Vec<f32>> {
        let missing = || LlamaError::Weights(format!("host weights lack {}", t.gguf_name()));
        let v = match t {
            Tensor::Embedding => &mut self.embedding,
            Tensor::OutputNorm => &mut self.output_norm,
            Tensor::Output => self.output.as_mut().ok_or_else(missing)?,
            Tensor::AttnNorm(l)
            | Tensor::Q(l)
            | Tensor::K(l)
            | Tensor::V(l)
            | Tensor::QBias(l)
            | Tensor::KBias(l)
            | Tensor::VBias(l)
            | Tensor::O(l)
            | Tensor::FfnNorm(l)
            | Tensor::Gate(l)
            | Tensor::Up(l)
            | Tensor::Down(l) => {
                let layer = self.layers.get_mut(l).ok_or_else(missing)?;
                match t {
                    Tensor::AttnNorm(_) => &mut layer.attn_norm,
                    Tensor::Q(_) => &mut layer.wq,
                    Tensor::K(_) => &mut layer.wk,
                    Tensor::V(_) => &mut layer.wv,
                    Tensor::QBias(_) => &mut layer.bq,
                    Tensor::KBias(_) => &mut layer.bk,
                    Tensor::VBias(_) => &mut layer.bv,
                    Tensor::O(_) => &mut layer.wo,
                    Tensor::FfnNorm(_) => &mut layer.ffn_norm,
                    Tensor::Gate(_) => &mut layer.w_gate,
                    Tensor::Up(_) => &mut layer.w_up,
                    _ => &mut layer.w_down,
                }
            }
        };
        Ok(std::mem::take(v))
    }
}

/// One decoder layer's weights on the device.
pub(crate) struct LayerWeights {
    pub attn_norm: Buffer,
    pub wq: Buffer,
    pub wk: Buffer,
    pub wv: Buffer,
    /// The q, k and v biases (f32), when the model has them.
    pub qkv_bias: Option<[Buffer; 3]>,
    pub wo: Buffer,
    pub ffn_norm: Buffer,
    pub w_gate: Buffer,
    pub w_up: Buffer,
    pub w_down: Buffer,
}

/// Every weight of the model on the device. Norm weights and biases are f32; matrices and the
/// embedding table are in the chosen weight dtype.
pub(crate) struct Weights {
    pub embedding: Buffer,
    pub layers: Vec<LayerWeights>,
    pub output_norm: Buffer,
    /// `None`: the output projection is `embedding`.
    pub output: Option<Buffer>,
}

/// How the weight matrices and the embedding table are stored on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightStorage {
    /// Dequantized to f32 and converted to this float type (`F32`, `F16` or `BF16`).
    Convert(DType),
    /// As the file stores them (quantized blocks stay quantized), where the device has
    /// kernels for the type ([`Device::supports_weight_dtype`]); other tensors are
    /// dequantized to f32. Only GGUF files are read natively; host weights are f32.
    Native,
}

impl From<DType> for WeightStorage {
    fn from(dtype: DType) -> Self {
        WeightStorage::Convert(dtype)
    }
}

impl WeightStorage {
    /// The float type host (f32) weights are converted to.
    pub(crate) fn host_dtype(self) -> DType {
        match self {
            WeightStorage::Convert(d) => d,
            WeightStorage::Native => DType::F32,
        }
    }
}

impl Weights {
    /// Uploads every tensor `get` returns (f32, checked against the expected size), norms as
    /// f32 and the rest as `dtype`.
    pub(crate) fn upload(
        dev: &dyn Device,
        config: &LlamaConfig,
        dtype: DType,
        tied: bool,
        mut get: impl FnMut(Tensor) -> Result<Vec<f32>>,
    ) -> Result<Self> {
        check_float(dtype)?;
        Self::build(config, tied, |t: Tensor| {
            let data = get(t)?;
            let ty = if t.is_vector() { DType::F32 } else { dtype };
            upload_checked(dev, config, t, &data, ty)
        })
    }

    /// Reads every tensor of a GGUF file onto the device: norms as f32, matrices and the
    /// embedding table as `storage` says.
    pub(crate) fn from_gguf(
        dev: &dyn Device,
        file: &GgufFile,
        config: &LlamaConfig,
        storage: WeightStorage,
    ) -> Result<Self> {
        if let WeightStorage::Convert(dtype) = storage {
            check_float(dtype)?;
        }
        Self::build(config, config.tied_embeddings, |t: Tensor| {
            let info = gguf_info(file, config, t)?;
            let native = match storage {
                WeightStorage::Native if !t.is_vector() => {
                    info.ty.dtype().filter(|&d| dev.supports_weight_dtype(d))
                }
                _ => None,
            };
            if let Some(dtype) = native {
                let [rows, cols] = t.shape(config);
                // In place where the device reads host memory (the CPU): no copy, the buffer
                // keeps the mapping; else copied, and this process's pages of it dropped.
                let buf = dev.import(dtype, rows * cols, file.tensor_shared(&info.name)?)?;
                if !dev.imports_in_place(dtype) {
                    file.release_tensor_pages(&info.name);
                }
                return Ok(buf);
            }
            let data = file.tensor_f32(&info.name)?;
            file.release_tensor_pages(&info.name);
            let ty = if t.is_vector() {
                DType::F32
            } else {
                storage.host_dtype()
            };
            upload_checked(dev, config, t, &data, ty)
        })
    }

    /// Builds the weights from one loader per tensor.
    fn build(
        config: &LlamaConfig,
        tied: bool,
        mut load: impl FnMut(Tensor) -> Result<Buffer>,
    ) -> Result<Self> {
        let embedding = load(Tensor::Embedding)?;
        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            layers.push(LayerWeights {
                attn_norm: load(Tensor::AttnNorm(l))?,
                wq: load(Tensor::Q(l))?,
                wk: load(Tensor::K(l))?,
                wv: load(Tensor::V(l))?,
                qkv_bias: if config.qkv_bias {
                    Some([
                        load(Tensor::QBias(l))?,
                        load(Tensor::KBias(l))?,
                        load(Tensor::VBias(l))?,
                    ])
                } else {
                    None
                },
                wo: load(Tensor::O(l))?,
                ffn_norm: load(Tensor::FfnNorm(l))?,
                w_gate: load(Tensor::Gate(l))?,
                w_up: load(Tensor::Up(l))?,
                w_down: load(Tensor::Down(l))?,
            });
        }
        let output_norm = load(Tensor::OutputNorm)?;
        let output = if tied {
            None
        } else {
            Some(load(Tensor::Output)?)
        };
        Ok(Weights {
            embedding,
            layers,
            output_norm,
            output,
        })
    }
}

/// Fails unless `dtype` is a float type (the types f32 host weights convert to).
fn check_float(dtype: DType) -> Result<()> {
    if dtype.is_float() {
        Ok(())
    } else {
        Err(LlamaError::Weights(format!(
            "weight dtype must be f32, f16 or bf16, got {dtype:?}"
        )))
    }
}

/// Uploads f32 `data` of tensor `t` as `dtype` after checking its size.
fn upload_checked(
    dev: &dyn Device,
    config: &LlamaConfig,
    t: Tensor,
    data: &[f32],
    dtype: DType,
) -> Result<Buffer> {
    let [rows, cols] = t.shape(config);
    if data.len() != rows * cols {
        return Err(LlamaError::Weights(format!(
            "{} has {} values, expected {rows} x {cols}",
            t.gguf_name(),
            data.len()
        )));
    }
    Ok(dev.upload_f32(data, dtype)?)
}

/// The info of tensor `t` in a GGUF file, after checking its dimensions.
fn gguf_info<'f>(
    file: &'f GgufFile,
    config: &LlamaConfig,
    t: Tensor,
) -> Result<&'f crate::gguf::TensorInfo> {
    let name = t.gguf_name();
    let info = file
        .tensor(&name)
        .ok_or_else(|| LlamaError::Weights(format!("missing tensor {name}")))?;
    let [rows, cols] = t.shape(config);
    // ggml order: innermost dimension first; vectors have one dimension.
    let want: Vec<u64> = if rows == 1 && t.is_vector() {
        vec![cols as u64]
    } else {
        vec![cols as u64, rows as u64]
    };
    if info.dims != want {
        return Err(LlamaError::Weights(format!(
            "tensor {name} has dims {:?}, expected {want:?} (ggml order)",
            info.dims
        )));
    }
    Ok(info)
}
