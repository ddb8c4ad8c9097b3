//! What the per-case `#[test]`s of `tests/suite.rs` call: each backend's device opened once per
//! test process and shared by its tests one at a time, and the skip line of a backend that is
//! absent on this machine.
//!
//! Tests of one backend run one after another on one device, as in the `arkvale-suite`
//! binary (some cases check a device's memory accounting, which concurrent cases would
//! disturb); tests of different backends may run in parallel.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use arkvale_core::Device;

use crate::{all_cases, backends};

/// A backend as the generated tests see it: its device (or why it is absent) and the lock
/// that lets one case at a time use it.
struct Shared {
    name: &'static str,
    device: Result<Arc<dyn Device>, String>,
    turn: Mutex<()>,
}

/// Every compiled backend's slot, filled the first time one of its tests runs.
fn slots() -> &'static [(&'static str, OnceLock<Shared>)] {
    static SLOTS: OnceLock<Vec<(&'static str, OnceLock<Shared>)>> = OnceLock::new();
    SLOTS.get_or_init(|| {
        backends::compiled_names()
            .into_iter()
            .map(|name| (name, OnceLock::new()))
            .collect()
    })
}

/// The shared state of `backend`, opening its device (and printing its skip line, if it is
/// absent) on first use. Panics if `backend` is not compiled in.
fn shared(backend: &str) -> &'static Shared {
    let (name, slot) = slots()
        .iter()
        .find(|(name, _)| *name == backend)
        .unwrap_or_else(|| panic!("backend '{backend}' is not compiled into this build"));
    slot.get_or_init(|| {
        let device = backends::open_backend(name).expect("a compiled backend opens");
        if let Err(reason) = &device {
            // Straight to the terminal: libtest would hide a passing test's `eprintln!`.
            let _ = writeln!(
                std::io::stderr(),
                "suite::{name}: skipped ({reason}); its tests return without running"
            );
        }
        Shared {
            name,
            device,
            turn: Mutex::new(()),
        }
    })
}

/// Runs the suite case `case` (`area::what`) on `backend`: returns if it passed or if the
/// backend's device is absent here (after the skip line), panics with the case's message if
/// it failed. Panics too if no case has that name.
pub fn run(backend: &str, case: &str) {
    let shared = shared(backend);
    let device = match &shared.device {
        Ok(device) => device,
        Err(_) => return,
    };
    let case = all_cases()
        .into_iter()
        .find(|c| c.name == case)
        .unwrap_or_else(|| panic!("no suite case is named '{case}'"));
    // A case that failed while holding the lock has been reported already; keep going.
    let outcome = {
        let _turn = shared.turn.lock().unwrap_or_else(|e| e.into_inner());
        crate::run_case(&case, device)
    };
    if let Err(msg) = outcome {
        panic!("{} on backend {}: {msg}", case.name, shared.name);
    }
}
