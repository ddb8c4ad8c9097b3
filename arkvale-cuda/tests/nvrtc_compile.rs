//! Compiles every kernel source through NVRTC for sm_80 (A100) and sm_90 (H100/H200), down
//! to machine code (so `ptxas` checks the inline PTX too). Needs no GPU: only `libnvrtc`
//! (CI installs the PyPI wheel `nvidia-cuda-nvrtc` 13.0 and puts its `lib` folder on
//! `LD_LIBRARY_PATH`). Without the library the test prints why and passes — unless
//! `ARKVALE_REQUIRE_NVRTC=1` (CI sets it), then it fails; with it, any compile error fails the
//! test with NVRTC's log.

use arkvale_cuda::kernels::{self, SOURCES};

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    if !kernels::nvrtc_present() {
        let required = std::env::var("ARKVALE_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "ARKVALE_REQUIRE_NVRTC=1 but libnvrtc is not on the loader path (LD_LIBRARY_PATH)"
        );
        println!("skipped: libnvrtc not found on the loader path (LD_LIBRARY_PATH)");
        return;
    }
    println!("NVRTC {:?}", kernels::nvrtc_version().unwrap());
    let mut failures = Vec::new();
    for arch in [80, 90] {
        for src in SOURCES {
            match kernels::compile(src, arch) {
                Ok(cubin) => {
                    assert!(!cubin.is_empty(), "{} sm_{arch}: empty cubin", src.name);
                    println!("{} sm_{arch}: {} bytes", src.name, cubin.len());
                }
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "kernel compile errors:\n{}",
        failures.join("\n\n")
    );
}

/// Every kernel the device launches by name is in the machine code (a typo in a kernel name
/// would otherwise only show on a GPU).
#[test]
fn every_launched_kernel_exists() {
    if !kernels::nvrtc_present() {
        println!("skipped: libnvrtc not found on the loader path (LD_LIBRARY_PATH)");
        return;
    }
    let cubins = kernels::compiled_for(90).unwrap();
    let has = |name: &str| {
        let needle = format!("{name}\0");
        cubins
            .iter()
            .any(|(_, c)| c.windows(needle.len()).any(|w| w == needle.as_bytes()))
    };
    let missing: Vec<String> = kernels::launched_names()
        .into_iter()
        .filter(|n| !has(n))
        .collect();
    assert!(
        missing.is_empty(),
        "kernels launched but not compiled: {missing:?}"
    );
}
