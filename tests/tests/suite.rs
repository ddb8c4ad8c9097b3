//! The differential suite as one `#[test]` per (backend, case): `suite::<backend>::<area>::<case>`,
//! for every backend compiled into this build (see the crate docs of `arkvale_tests`).
//!
//! `cargo test -p arkvale-tests suite::cpu::` runs the suite on the CPU backend,
//! `cargo test -p arkvale-tests suite::wgpu::ops::topk_ties_and_nan` one case on wgpu. A test
//! of a backend whose device is absent here prints `suite::<backend>: skipped (<reason>)` once
//! per run and returns: presence is only known at run time, so it cannot be `#[ignore]`d.
//! `cargo xtask test-all-backends` skips these tests (`--skip suite::`) and runs the
//! `arkvale-suite` binary instead, so the suite runs once there.
//!
//! The case list below must equal `arkvale_tests::all_cases()`, in order; the test
//! `every_suite_case_has_one_test_per_backend` fails when a case is added to the suite but not
//! here (or the other way round).

/// One backend's module: `mod <backend> { mod <area> { #[test] fn <case>() ... } }`.
macro_rules! backend_tests {
    ($backend:ident; $($area:ident: [$($case:ident),*]),*) => {
        /// The suite's cases on this backend.
        mod $backend {
            $(
                mod $area {
                    $(
                        #[test]
                        fn $case() {
                            arkvale_tests::generated::run(
                                stringify!($backend),
                                concat!(stringify!($area), "::", stringify!($case)),
                            );
                        }
                    )*
                }
            )*
        }
    };
}

/// `GENERATED` (every `area::case` name below, in order) and `mod suite` with one module of
/// tests per compiled backend.
macro_rules! suite_tests {
    ($($area:ident: [$($case:ident),* $(,)?]),* $(,)?) => {
        /// Every case that has a test below, as `area::case`.
        const GENERATED: &[&str] = &[$($(concat!(stringify!($area), "::", stringify!($case))),*),*];

        /// One module per backend compiled into this build.
        mod suite {
            backend_tests!(cpu; $($area: [$($case),*]),*);
            #[cfg(feature = "wgpu")]
            backend_tests!(wgpu; $($area: [$($case),*]),*);
            #[cfg(feature = "cuda")]
            backend_tests!(cuda; $($area: [$($case),*]),*);
        }
    };
}

suite_tests! {
    ops: [
        append_kv_f32,
        append_kv_f16,
        append_kv_bf16,
        summarize_cuboid_max,
        summarize_cuboid_center,
        summarize_cuboid_mean,
        summarize_sphere_max,
        summarize_sphere_center,
        summarize_sphere_mean,
        summarize_centroid,
        estimate_mean,
        estimate_max,
        topk_ties_and_nan,
        decode_attention_f32,
        decode_attention_f16,
        decode_attention_bf16,
        decode_attention_masked_f32,
        decode_attention_masked_f16,
        decode_attention_masked_bf16,
        decode_attention_page_lse_f32,
        decode_attention_page_lse_f16,
        decode_attention_page_lse_bf16,
        prefill_finalize_over_calls_f32,
        prefill_finalize_over_calls_f16,
        prefill_finalize_over_calls_bf16,
        attention_weights_f32,
        attention_weights_f16,
        attention_weights_bf16,
        backup_recall_bytes_identical_f32,
        backup_recall_bytes_identical_f16,
        backup_recall_bytes_identical_bf16,
        write_read_copy_fill,
        bad_descriptors_are_errors,
    ],
    storage: [
        backup_recall_round_trip,
        host_overflow_spills_to_disk,
        host_exhausted_without_spill_is_an_error,
    ],
    cache: [
        budget_covering_sequence_equals_full_bitwise,
        outputs_match_selected_tokens_every_policy,
        invariants_hold_over_random_runs,
        host_overflow_spills_and_stays_exact,
        exhausted_tiers_are_clear_errors,
        fig1d_recall_recovers_what_streaming_loses,
        removing_sequences_frees_every_tier,
        recall_displaces_the_lowest_ranked_residents,
        attention_feedback_keeps_what_attention_read,
    ],
    dense: [
        matmul_f32,
        matmul_f16,
        matmul_bf16,
        matmul_quantized,
        rmsnorm,
        rope_neox,
        rope_interleaved,
        silu_mul_and_add,
        embedding,
        argmax_ties_and_nan,
        bad_sizes_are_errors,
    ],
}

#[test]
fn every_suite_case_has_one_test_per_backend() {
    let cases: Vec<&str> = arkvale_tests::all_cases().iter().map(|c| c.name).collect();
    assert_eq!(
        GENERATED, cases,
        "the case list of tests/suite.rs must equal arkvale_tests::all_cases()"
    );
    let compiled = arkvale_tests::backends::compiled_names();
    let generated = [
        "cpu",
        #[cfg(feature = "wgpu")]
        "wgpu",
        #[cfg(feature = "cuda")]
        "cuda",
    ];
    assert_eq!(
        compiled, generated,
        "every compiled backend needs a module in tests/suite.rs"
    );
}
