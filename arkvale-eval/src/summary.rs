//! The summary tables of any task's records, by task name: the one place that knows which task
//! renders which tables, so that [`crate::report`] names no task. `arkvale eval plot` rebuilds
//! the tables of a `results.json` with [`task_tables`].

use crate::report::{Record, Table, accuracy_table};
use crate::{digest_recall, fidelity, recalls};

/// The summary tables of `records`, all of task `task`: each task's own rendering, and an
/// accuracy table for the retrieval tasks (passkey and the NIAH variants).
pub fn task_tables(task: &str, records: &[Record]) -> Vec<Table> {
    match task {
        "fidelity" => vec![fidelity::table(records)],
        "recalls" => vec![recalls::table(records)],
        "digest-recall" => digest_recall::tables(records),
        _ => vec![accuracy_table(
            &format!("{task} (correct / cases per context length)"),
            records,
        )],
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};

    use super::*;
    use crate::Results;

    fn rec(task: &str, policy: &str, extra: &[(&str, f64)]) -> Record {
        Record {
            task: task.into(),
            policy: policy.into(),
            budget: Some(512),
            page_size: 16,
            context: 1024,
            depth: None,
            key: String::new(),
            output: String::new(),
            correct: Some(true),
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect(),
        }
    }

    #[test]
    fn read_back_results_get_each_tasks_tables() {
        let records = vec![
            rec("passkey", "arkvale", &[]),
            rec("fidelity", "arkvale", &[("agreement", 0.9), ("kl", 0.01)]),
            rec(
                "digest-recall",
                "cuboid-mean",
                &[("k", 4.0), ("recall", 0.5)],
            ),
            rec("recalls", "arkvale", &[("topk", 256.0)]),
        ];
        let written = Results {
            meta: Map::new(),
            records: records.clone(),
            tables: Vec::new(),
        };
        let mut read = Results::from_json(&written.to_json()).unwrap();
        assert_eq!(read.records, records);
        assert!(read.tables.is_empty());
        read.summarize(task_tables);
        let one = |i: usize| &records[i..i + 1];
        let mut want = vec![
            accuracy_table("passkey (correct / cases per context length)", one(0)),
            fidelity::table(one(1)),
        ];
        want.extend(digest_recall::tables(one(2)));
        want.push(recalls::table(one(3)));
        assert_eq!(read.tables, want);
        assert_eq!(read.tables[2].header, ["digest", "k=1", "k=2", "k=4"]);
    }
}
