//! The kernel sources (`kernels/*.cu`, CUDA C) and their run-time compilation with NVRTC.
//!
//! Every source is compiled with `kernels/common.cuh` prepended (storage types, half/bf16
//! conversions as PTX instructions, warp helpers), so no CUDA header and no include path is
//! needed: NVRTC alone suffices. [`compile`] produces machine code (a cubin) for one real
//! architecture (`sm_XY`), which runs `ptxas` too, so a kernel that compiles here also
//! assembles. The device compiles every source once per process and architecture
//! ([`compiled_for`]); the CI test `tests/nvrtc_compile.rs` compiles them for sm_80 and sm_90.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

/// One kernel source file: its name and CUDA C text (without the common prelude).
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// File name under `kernels/`.
    pub name: &'static str,
    /// The file's text.
    pub code: &'static str,
}

/// The prelude prepended to every source.
pub const COMMON: &str = include_str!("../kernels/common.cuh");

/// Every kernel source of the backend, one job per file.
pub const SOURCES: &[KernelSource] = &[
    KernelSource {
        name: "append.cu",
        code: include_str!("../kernels/append.cu"),
    },
    KernelSource {
        name: "summarize.cu",
        code: include_str!("../kernels/summarize.cu"),
    },
    KernelSource {
        name: "estimate.cu",
        code: include_str!("../kernels/estimate.cu"),
    },
    KernelSource {
        name: "topk.cu",
        code: include_str!("../kernels/topk.cu"),
    },
    KernelSource {
        name: "decode_attention.cu",
        code: include_str!("../kernels/decode_attention.cu"),
    },
    KernelSource {
        name: "attention_weights.cu",
        code: include_str!("../kernels/attention_weights.cu"),
    },
    KernelSource {
        name: "dense.cu",
        code: include_str!("../kernels/dense.cu"),
    },
    KernelSource {
        name: "matmul.cu",
        code: include_str!("../kernels/matmul.cu"),
    },
];

/// Every kernel name the device launches (built exactly as `kv.rs`, `attention.rs`,
/// `dense.rs` and `launch.rs` build them), so that a test can check each one exists in the
/// compiled sources.
pub fn launched_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "estimate",
        "topk",
        "attn_combine",
        "attn_finalize",
        "fill_f32",
        "rmsnorm",
        "rope",
        "silu_mul",
        "add_inplace",
        "add_bias",
        "argmax",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for t in ["f32", "f16", "bf16"] {
        for base in [
            "append_kv",
            "summarize",
            "attn_weights",
            "embedding",
            "widen",
            "matmul_rows",
        ] {
            names.push(format!("{base}_{t}"));
        }
        for e in [1, 2, 4, 8] {
            names.push(format!("attn_partial_{t}_e{e}"));
        }
    }
    names
}

/// Whether the NVRTC library can be loaded on this machine (without it, nothing compiles and
/// cudarc would panic on first use). Looked up by cudarc's loader: `libnvrtc.so` /
/// `libnvrtc.so.13` on the dynamic loader's path (`LD_LIBRARY_PATH`).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { nvrtc_sys::is_culib_present() }
}

/// NVRTC's version `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32), String> {
    if !nvrtc_present() {
        return Err("libnvrtc not found".into());
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; both pointers are valid for writes.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| format!("nvrtcVersion: {e:?}"))?;
    Ok((major, minor))
}

/// The options every source is compiled with, for `sm_{arch}` (e.g. `arch = 90`).
pub fn options(arch: u32) -> Vec<String> {
    vec![
        format!("--gpu-architecture=sm_{arch}"),
        "--std=c++17".into(),
        // IEEE division and square root (the defaults, stated): digests and scores must match
        // the CPU's f32 arithmetic.
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        "--ftz=false".into(),
    ]
}

/// Compiles one source (with the common prelude) to a cubin for `sm_{arch}`. The error holds
/// NVRTC's log.
pub fn compile(src: &KernelSource, arch: u32) -> Result<Vec<u8>, String> {
    if !nvrtc_present() {
        return Err("libnvrtc not found on the loader path".into());
    }
    let text = format!("{COMMON}\n#line 1 \"{}\"\n{}", src.name, src.code);
    let code = CString::new(text).map_err(|_| format!("{}: NUL byte in source", src.name))?;
    let name = CString::new(src.name).map_err(|_| "NUL in name".to_string())?;
    let prog = nvrtc::create_program(&code, Some(&name))
        .map_err(|e| format!("{}: nvrtcCreateProgram: {e:?}", src.name))?;
    let result = (|| {
        // SAFETY: `prog` is a live program created above.
        let compiled = unsafe { nvrtc::compile_program(prog, &options(arch)) };
        if let Err(e) = compiled {
            // SAFETY: as above.
            let log = unsafe { nvrtc::get_program_log(prog) }
                .map(|l| c_chars_to_string(&l))
                .unwrap_or_default();
            return Err(format!("{} for sm_{arch}: {e:?}\n{log}", src.name));
        }
        let mut size = 0usize;
        // SAFETY: as above; `size` is valid for writes.
        unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) }
            .result()
            .map_err(|e| format!("{}: nvrtcGetCUBINSize: {e:?}", src.name))?;
        let mut cubin = vec![0u8; size];
        // SAFETY: `cubin` has the size NVRTC reported.
        unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char) }
            .result()
            .map_err(|e| format!("{}: nvrtcGetCUBIN: {e:?}", src.name))?;
        Ok(cubin)
    })();
    // SAFETY: destroyed once, after its last use.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    result
}

/// NVRTC's log as text (it is NUL-terminated).
fn c_chars_to_string(log: &[c_char]) -> String {
    let bytes: Vec<u8> = log.iter().map(|&c| c as u8).collect();
    CStr::from_bytes_until_nul(&bytes)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned())
}

/// Every source's machine code for one architecture: `(source name, cubin)`.
pub type Cubins = Arc<Vec<(&'static str, Vec<u8>)>>;

/// Every source compiled for `sm_{arch}`, compiled once per process and architecture.
pub fn compiled_for(arch: u32) -> Result<Cubins, String> {
    static CACHE: OnceLock<Mutex<HashMap<u32, Cubins>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache
        .lock()
        .map_err(|_| "kernel cache poisoned".to_string())?;
    if let Some(c) = map.get(&arch) {
        return Ok(c.clone());
    }
    let mut out = Vec::with_capacity(SOURCES.len());
    for src in SOURCES {
        out.push((src.name, compile(src, arch)?));
    }
    let out = Arc::new(out);
    map.insert(arch, out.clone());
    Ok(out)
}
