//! Results: one [`Record`] per case, summary [`Table`]s, and their files (`results.json`,
//! `results.csv`, `summary.md`).

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::error::{EvalError, Result};

/// One evaluated case. The fixed keys are in every task's records (null where a task has no
/// such notion, e.g. `depth` for fidelity); task-specific metrics go in `extra`.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Task name (`passkey`, `niah-multikey`, `fidelity`, ...).
    pub task: String,
    /// Policy name.
    pub policy: String,
    /// Token budget (`None` for `full`).
    pub budget: Option<usize>,
    /// Tokens per page.
    pub page_size: usize,
    /// Prompt tokens.
    pub context: usize,
    /// Needle depth as a fraction of the haystack (retrieval tasks).
    pub depth: Option<f64>,
    /// What had to be retrieved (retrieval tasks).
    pub key: String,
    /// What the model generated (retrieval tasks).
    pub output: String,
    /// Whether the case passed (retrieval tasks).
    pub correct: Option<bool>,
    /// Task-specific values (scores, agreement, timings, ...).
    pub extra: Map<String, Value>,
}

impl Record {
    /// The record as a JSON object: the fixed keys, then `extra`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("task".into(), json!(self.task));
        m.insert("policy".into(), json!(self.policy));
        m.insert("budget".into(), json!(self.budget));
        m.insert("page_size".into(), json!(self.page_size));
        m.insert("context".into(), json!(self.context));
        m.insert("depth".into(), json!(self.depth));
        m.insert("key".into(), json!(self.key));
        m.insert("output".into(), json!(self.output));
        m.insert("correct".into(), json!(self.correct));
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }

    /// `policy@budget`, or `full`.
    pub fn label(&self) -> String {
        match self.budget {
            Some(b) => format!("{}@{b}", self.policy),
            None => self.policy.clone(),
        }
    }

    /// A record from its JSON object ([`Record::to_json`]'s inverse); `None` if a fixed key is
    /// missing or mistyped.
    pub fn from_json(v: &Value) -> Option<Record> {
        let o = v.as_object()?;
        let fixed = [
            "task",
            "policy",
            "budget",
            "page_size",
            "context",
            "depth",
            "key",
            "output",
            "correct",
        ];
        Some(Record {
            task: o.get("task")?.as_str()?.to_string(),
            policy: o.get("policy")?.as_str()?.to_string(),
            budget: o.get("budget")?.as_u64().map(|b| b as usize),
            page_size: o.get("page_size")?.as_u64()? as usize,
            context: o.get("context")?.as_u64()? as usize,
            depth: o.get("depth")?.as_f64(),
            key: o.get("key")?.as_str()?.to_string(),
            output: o.get("output")?.as_str()?.to_string(),
            correct: o.get("correct")?.as_bool(),
            extra: o
                .iter()
                .filter(|(k, _)| !fixed.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    /// An `extra` value as f64.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.extra.get(name).and_then(Value::as_f64)
    }
}

/// A summary table (markdown on stdout and in `summary.md`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// A title line.
    pub title: String,
    /// Column names.
    pub header: Vec<String>,
    /// Cells, row-major.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// The table in GitHub markdown, after a `### title` line.
    pub fn to_markdown(&self) -> String {
        let mut s = format!("### {}\n\n| {} |\n|", self.title, self.header.join(" | "));
        for _ in &self.header {
            s.push_str(" --- |");
        }
        s.push('\n');
        for r in &self.rows {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        s
    }
}

/// Everything one `arkvale eval` run produced.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// The run's settings (model, options, seed, timings).
    pub meta: Map<String, Value>,
    /// One record per case.
    pub records: Vec<Record>,
    /// Summary tables.
    pub tables: Vec<Table>,
}

impl Results {
    /// Results read back from a `results.json`: its meta and records, no tables yet
    /// ([`Results::summarize`] rebuilds them with the tasks' renderings).
    pub fn from_json(v: &Value) -> Result<Results> {
        let bad = || EvalError::Input("not an arkvale eval results.json".into());
        let records = v["records"]
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|r| Record::from_json(r).ok_or_else(bad))
            .collect::<Result<Vec<_>>>()?;
        Ok(Results {
            meta: v["meta"].as_object().cloned().unwrap_or_default(),
            records,
            tables: Vec::new(),
        })
    }

    /// Rebuilds the summary tables from the records, task by task: `tables_of(task, records)`
    /// renders the records of one task. The report knows no task; the caller passes their
    /// renderings (`crate::summary::task_tables` for the tasks of this crate).
    pub fn summarize(&mut self, tables_of: impl Fn(&str, &[Record]) -> Vec<Table>) {
        let mut tasks: Vec<String> = self.records.iter().map(|r| r.task.clone()).collect();
        tasks.dedup();
        let mut tables = Vec::new();
        for t in &tasks {
            let mine: Vec<Record> = self
                .records
                .iter()
                .filter(|r| &r.task == t)
                .cloned()
                .collect();
            tables.extend(tables_of(t, &mine));
        }
        self.tables = tables;
    }

    /// `{"meta": {...}, "records": [...]}`.
    pub fn to_json(&self) -> Value {
        json!({
            "meta": Value::Object(self.meta.clone()),
            "records": self.records.iter().map(Record::to_json).collect::<Vec<_>>(),
        })
    }

    /// The records as CSV: the fixed keys, then every `extra` key any record has (sorted).
    pub fn to_csv(&self) -> String {
        let fixed = [
            "task",
            "policy",
            "budget",
            "page_size",
            "context",
            "depth",
            "key",
            "output",
            "correct",
        ];
        let mut extra: Vec<&String> = self.records.iter().flat_map(|r| r.extra.keys()).collect();
        extra.sort();
        extra.dedup();
        let mut s: Vec<String> = fixed.iter().map(|k| k.to_string()).collect();
        s.extend(extra.iter().map(|k| k.to_string()));
        let mut out = s.join(",");
        out.push('\n');
        for r in &self.records {
            let j = r.to_json();
            let cells: Vec<String> = fixed
                .iter()
                .map(|k| k.to_string())
                .chain(extra.iter().map(|k| k.to_string()))
                .map(|k| csv_cell(j.get(&k).unwrap_or(&Value::Null)))
                .collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }

    /// Every table in markdown.
    pub fn markdown(&self) -> String {
        self.tables
            .iter()
            .map(Table::to_markdown)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Writes `results.json`, `results.csv` and `summary.md` into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| EvalError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let json = serde_json::to_string_pretty(&self.to_json())
            .map_err(|e| EvalError::Input(format!("cannot serialize the results: {e}")))?;
        let p = dir.join("results.json");
        std::fs::write(&p, json + "\n").map_err(io(&p))?;
        let p = dir.join("results.csv");
        std::fs::write(&p, self.to_csv()).map_err(io(&p))?;
        let p = dir.join("summary.md");
        std::fs::write(&p, self.markdown()).map_err(io(&p))?;
        Ok(())
    }
}

fn csv_cell(v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Accuracy tables of retrieval records: one row per policy@budget, one column per requested
/// context length (`extra.target_context`, else `context`; correct / cases), plus the overall
/// percentage.
pub fn accuracy_table(title: &str, records: &[Record]) -> Table {
    let ctx = |r: &Record| r.metric("target_context").map_or(r.context, |c| c as usize);
    let mut contexts: Vec<usize> = records.iter().map(ctx).collect();
    contexts.sort();
    contexts.dedup();
    let mut labels: Vec<(String, Option<usize>, String)> = Vec::new();
    for r in records {
        let key = (r.policy.clone(), r.budget, r.label());
        if !labels.contains(&key) {
            labels.push(key);
        }
    }
    let mut header = vec!["policy".to_string(), "budget".to_string()];
    header.extend(contexts.iter().map(|c| format!("ctx {c}")));
    header.push("all".into());
    let rows = labels
        .iter()
        .map(|(policy, budget, label)| {
            let mine: Vec<&Record> = records.iter().filter(|r| &r.label() == label).collect();
            let mut row = vec![policy.clone(), budget.map_or("-".into(), |b| b.to_string())];
            for c in &contexts {
                let (ok, n) = count(mine.iter().filter(|r| ctx(r) == *c).copied());
                row.push(if n == 0 {
                    "-".into()
                } else {
                    format!("{ok}/{n}")
                });
            }
            let (ok, n) = count(mine.iter().copied());
            row.push(format!("{:.0}%", 100.0 * ok as f64 / n.max(1) as f64));
            row
        })
        .collect();
    Table {
        title: title.into(),
        header,
        rows,
    }
}

fn count<'a>(rs: impl Iterator<Item = &'a Record>) -> (usize, usize) {
    rs.fold((0, 0), |(ok, n), r| {
        (ok + usize::from(r.correct == Some(true)), n + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(policy: &str, budget: Option<usize>, ctx: usize, ok: bool) -> Record {
        Record {
            task: "passkey".into(),
            policy: policy.into(),
            budget,
            page_size: 32,
            context: ctx,
            depth: Some(0.5),
            key: "12345".into(),
            output: " 12,345 \"x\"".into(),
            correct: Some(ok),
            extra: Map::from_iter([("prefill_s".to_string(), json!(1.5))]),
        }
    }

    #[test]
    fn json_csv_and_markdown() {
        let r = Results {
            meta: Map::new(),
            records: vec![
                rec("full", None, 1024, true),
                rec("arkvale", Some(512), 1024, true),
                rec("arkvale", Some(512), 2048, false),
            ],
            tables: Vec::new(),
        };
        let j = r.to_json();
        let first = &j["records"][0];
        for k in [
            "task",
            "policy",
            "budget",
            "page_size",
            "context",
            "depth",
            "key",
        ] {
            assert!(first.get(k).is_some(), "{k}");
        }
        assert_eq!(first["prefill_s"], json!(1.5));
        let csv = r.to_csv();
        assert!(csv.starts_with(
            "task,policy,budget,page_size,context,depth,key,output,correct,prefill_s\n"
        ));
        assert!(csv.contains("\" 12,345 \"\"x\"\"\""), "{csv}");
        let t = accuracy_table("t", &r.records);
        assert_eq!(t.rows[1], vec!["arkvale", "512", "1/1", "0/1", "50%"]);
        assert!(t.to_markdown().contains("| full | - | 1/1 | - | 100% |"));
    }
}
