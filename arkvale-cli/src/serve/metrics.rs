//! `GET /metrics`: the engine's counters in the Prometheus text format.

use std::fmt::Write;

use arkvale_model::engine::Metrics;

/// Renders `m` (and the server's uptime) as Prometheus text exposition.
pub fn prometheus(m: &Metrics, uptime_seconds: f64) -> String {
    let rows: [(&str, &str, &str, f64); 13] = [
        (
            "arkvale_running_sequences",
            "gauge",
            "Sequences being prefilled or decoded.",
            m.running as f64,
        ),
        (
            "arkvale_queued_requests",
            "gauge",
            "Requests waiting for KV memory.",
            m.queued as f64,
        ),
        (
            "arkvale_requests_finished_total",
            "counter",
            "Requests finished (any reason: done, failed or cancelled).",
            m.finished as f64,
        ),
        (
            "arkvale_requests_cancelled_total",
            "counter",
            "Requests cancelled because the client left (also counted as finished).",
            m.cancelled as f64,
        ),
        (
            "arkvale_generated_tokens_total",
            "counter",
            "Tokens generated.",
            m.generated_tokens as f64,
        ),
        (
            "arkvale_prefilled_tokens_total",
            "counter",
            "Prompt tokens prefilled.",
            m.prefilled_tokens as f64,
        ),
        (
            "arkvale_decode_steps_total",
            "counter",
            "Batched decode steps.",
            m.decode_steps as f64,
        ),
        (
            "arkvale_decode_tokens_per_second",
            "gauge",
            "Generated tokens per second of decode time.",
            m.decode_tokens_per_s(),
        ),
        (
            "arkvale_recalls_per_step",
            "gauge",
            "KV pages recalled from host per decode step.",
            m.recalls_per_step(),
        ),
        (
            "arkvale_kv_resident_bytes",
            "gauge",
            "KV bytes resident on the device.",
            m.kv_resident_bytes as f64,
        ),
        (
            "arkvale_kv_full_bytes",
            "gauge",
            "KV bytes a full cache would hold for the running sequences.",
            m.kv_full_bytes as f64,
        ),
        (
            "arkvale_kv_pool_bytes",
            "gauge",
            "Bytes of the device KV pool.",
            m.kv_pool_bytes as f64,
        ),
        (
            "arkvale_uptime_seconds",
            "gauge",
            "Seconds since the server started.",
            uptime_seconds,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_type_and_value() {
        let m = Metrics {
            running: 3,
            kv_resident_bytes: 1024,
            ..Default::default()
        };
        let text = prometheus(&m, 1.5);
        assert!(text.contains("arkvale_running_sequences 3\n"), "{text}");
        assert!(text.contains("arkvale_kv_resident_bytes 1024\n"), "{text}");
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples.len(), 13);
        assert_eq!(text.matches("# TYPE").count(), 13);
    }
}
