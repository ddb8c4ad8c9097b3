//! The `*.safetensors` files of a Hugging Face model directory: one `model.safetensors`, or
//! shards listed by `model.safetensors.index.json`; memory-mapped, tensors widened to f32.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors};
use serde_json::Value;

use super::{HfError, Result};
use crate::llama::{HostLayer, LlamaConfig, LlamaHostWeights};

/// The single-file weights name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The shard index name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One memory-mapped `.safetensors` file and its parsed header.
struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Bytes before the data section (8-byte length + JSON header).
    data_start: usize,
    meta: Metadata,
}

/// The safetensors weight files of a model directory, memory-mapped.
pub struct SafetensorsWeights {
    shards: Vec<Shard>,
    /// Tensor name → index into `shards`.
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for SafetensorsWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsWeights")
            .field(
                "files",
                &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.index.len())
            .finish()
    }
}

impl SafetensorsWeights {
    /// Opens the weights of `dir`: [`INDEX_FILE`] and every shard its `weight_map` names when
    /// the index exists, otherwise [`SINGLE_FILE`].
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        if index_path.is_file() {
            let text = read_text(&index_path)?;
            let what = index_path.display().to_string();
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| HfError::Weights(format!("{what}: invalid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    HfError::Weights(format!("{what}: missing object \"weight_map\""))
                })?;
            let mut files: Vec<String> = Vec::new();
            let mut wanted: Vec<(String, usize)> = Vec::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    HfError::Weights(format!("{what}: weight_map[{name:?}] is not a string"))
                })?;
                if file.contains('/') || file.contains('\\') || file == ".." {
                    return Err(HfError::Weights(format!(
                        "{what}: shard name {file:?} must be a plain file name"
                    )));
                }
                let i = match files.iter().position(|f| f == file) {
                    Some(i) => i,
                    None => {
                        files.push(file.to_string());
                        files.len() - 1
                    }
                };
                wanted.push((name.clone(), i));
            }
            let shards = files
                .iter()
                .map(|f| {
                    let p = dir.join(f);
                    if !p.is_file() {
                        return Err(HfError::Weights(format!(
                            "missing shard {} (listed in {what})",
                            p.display()
                        )));
                    }
                    Shard::open(p)
                })
                .collect::<Result<Vec<_>>>()?;
            let mut index = HashMap::new();
            for (name, i) in wanted {
                if shards[i].meta.info(&name).is_none() {
                    return Err(HfError::Weights(format!(
                        "{}: has no tensor {name} (the index {what} says it does)",
                        shards[i].path.display()
                    )));
                }
                index.insert(name, i);
            }
            Ok(SafetensorsWeights { shards, index })
        } else {
            let p = dir.join(SINGLE_FILE);
            if !p.is_file() {
                return Err(HfError::Weights(format!(
                    "{}: neither {SINGLE_FILE} nor {INDEX_FILE} found",
                    dir.display()
                )));
            }
            let shard = Shard::open(p)?;
            let index = shard.meta.tensors().into_keys().map(|k| (k, 0)).collect();
            Ok(SafetensorsWeights {
                shards: vec![shard],
                index,
            })
        }
    }

    /// The weight files in use.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Whether tensor `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Tensor `name` widened to f32 (F32, F16, BF16 stored), after checking its shape is
    /// `shape`.
    pub fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let i = *self
            .index
            .get(name)
            .ok_or_else(|| HfError::Weights(format!("missing tensor {name}")))?;
        let s = &self.shards[i];
        let file = s.path.display();
        let info = s
            .meta
            .info(name)
            .ok_or_else(|| HfError::Weights(format!("{file}: missing tensor {name}")))?;
        if info.shape != shape {
            return Err(HfError::Weights(format!(
                "{file}: tensor {name} has shape {:?}, expected {shape:?}",
                info.shape
            )));
        }
        let (a, b) = info.data_offsets;
        let bytes = a
            .checked_add(s.data_start)
            .zip(b.checked_add(s.data_start))
            .and_then(|(a, b)| s.map.get(a..b))
            .ok_or_else(|| {
                HfError::Weights(format!("{file}: tensor {name} lies outside the file"))
            })?;
        let n: usize = shape.iter().product();
        let width = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(HfError::Weights(format!(
                    "{file}: tensor {name} has unsupported dtype {other:?} (supported: F32, F16, \
                     BF16)"
                )));
            }
        };
        if bytes.len() != n * width {
            return Err(HfError::Weights(format!(
                "{file}: tensor {name} has {} bytes, expected {}",
                bytes.len(),
                n * width
            )));
        }
        Ok(match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        })
    }

    /// Every weight of a [`LlamaConfig`] model, by Hugging Face names, in Hugging Face Q/K row
    /// order (for [`arkvale_core::RopeStyle::Neox`]). `lm_head.weight` is read unless
    /// `config.tied_embeddings`; the `self_attn.{q,k,v}_proj.bias` vectors when
    /// `config.qkv_bias`.
    pub fn llama_host_weights(&self, c: &LlamaConfig) -> Result<LlamaHostWeights> {
        let (d, kv, f) = (c.d_model, c.kv_heads * c.head_dim, c.d_ff);
        let layer = |l: usize| -> Result<HostLayer> {
            let t =
                |n: &str, shape: &[usize]| self.tensor_f32(&format!("model.layers.{l}.{n}"), shape);
            let bias = |n: &str, len: usize| -> Result<Vec<f32>> {
                if c.qkv_bias {
                    t(n, &[len])
                } else {
                    Ok(Vec::new())
                }
            };
            Ok(HostLayer {
                attn_norm: t("input_layernorm.weight", &[d])?,
                wq: t("self_attn.q_proj.weight", &[d, d])?,
                wk: t("self_attn.k_proj.weight", &[kv, d])?,
                wv: t("self_attn.v_proj.weight", &[kv, d])?,
                bq: bias("self_attn.q_proj.bias", d)?,
                bk: bias("self_attn.k_proj.bias", kv)?,
                bv: bias("self_attn.v_proj.bias", kv)?,
                wo: t("self_attn.o_proj.weight", &[d, d])?,
                ffn_norm: t("post_attention_layernorm.weight", &[d])?,
                w_gate: t("mlp.gate_proj.weight", &[f, d])?,
                w_up: t("mlp.up_proj.weight", &[f, d])?,
                w_down: t("mlp.down_proj.weight", &[d, f])?,
            })
        };
        Ok(LlamaHostWeights {
            embedding: self.tensor_f32("model.embed_tokens.weight", &[c.vocab, d])?,
            layers: (0..c.layers).map(layer).collect::<Result<_>>()?,
            output_norm: self.tensor_f32("model.norm.weight", &[d])?,
            output: if c.tied_embeddings {
                None
            } else {
                Some(self.tensor_f32("lm_head.weight", &[c.vocab, d])?)
            },
        })
    }
}

impl Shard {
    fn open(path: PathBuf) -> Result<Self> {
        let file = File::open(&path).map_err(|e| HfError::Io {
            path: path.clone(),
            source: e,
        })?;
        // SAFETY: the map is read-only; like every memory-mapped reader, this assumes no one
        // truncates or rewrites the weight file while the model loads.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| HfError::Io {
            path: path.clone(),
            source: e,
        })?;
        let (n, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
            HfError::Weights(format!(
                "{}: not a valid safetensors file: {e}",
                path.display()
            ))
        })?;
        let data_start = n
            .checked_add(8)
            .ok_or_else(|| HfError::Weights(format!("{}: bad header size", path.display())))?;
        Ok(Shard {
            path,
            map,
            data_start,
            meta,
        })
    }
}

/// Reads a UTF-8 text file.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| HfError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}
