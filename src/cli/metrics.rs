//! `hone metrics RUN --format csv|tensorboard`: a run's `metrics` events as one CSV file per
//! stage, or as TensorBoard scalar event files (one directory per stage, so TensorBoard shows
//! each stage as a run).
//!
//! A resume supersedes the metrics a crashed worker logged after the checkpoint it resumes from,
//! as every reader of `events.jsonl` does: rows after `resumed.from_step` are dropped, and the
//! resumed worker's rows for those steps replace them.
//!
//! TensorBoard's file format is written here (no maintained Rust crate writes it without pulling
//! in a protobuf toolchain): a file of records, each `u64` length (little-endian), the masked
//! CRC-32C of those 8 bytes, the bytes of one `Event` protobuf, their masked CRC-32C. The first
//! event holds `file_version = "brain.Event:2"`; every other one a `Summary` of `simple_value`s.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::run::{dir_component as safe_component, kind, Event, EventReader, RunDir};
use crate::sanitize::sanitize;

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One CSV file per stage: `step`, then one column per metric.
    Csv,
    /// TensorBoard scalar event files, one directory per stage.
    Tensorboard,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Tensorboard => "tensorboard",
        }
    }
}

/// One stage's metrics: column names (`loss` first, then alphabetical), rows by global step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageMetrics {
    /// The stage's name.
    pub stage: String,
    /// Metric names: `loss` first, then the others in alphabetical order.
    pub columns: Vec<String>,
    /// Global step → (wall time in ms, metric → value).
    pub rows: BTreeMap<u64, (u64, BTreeMap<String, f64>)>,
}

/// The `metrics` events of a run grouped by stage (in the order stages first appear), with the
/// rows a resume superseded dropped.
pub fn collect(events: &[Event]) -> Vec<StageMetrics> {
    let mut stages: Vec<StageMetrics> = Vec::new();
    for e in events {
        match e.event.as_str() {
            kind::RESUMED => {
                let from = e.fields.get("from_step").and_then(Value::as_u64).or(e.step).unwrap_or(0);
                for s in &mut stages {
                    s.rows.retain(|step, _| *step <= from);
                }
            }
            kind::METRICS => {
                let Some(step) = e.step else { continue };
                let name = e.stage.clone().unwrap_or_else(|| "-".to_string());
                let index = if let Some(i) = stages.iter().position(|s| s.stage == name) {
                    i
                } else {
                    stages.push(StageMetrics { stage: name, ..StageMetrics::default() });
                    stages.len() - 1
                };
                let stage = &mut stages[index];
                let mut values = BTreeMap::new();
                for (key, value) in &e.fields {
                    let Some(v) = value.as_f64() else { continue };
                    if !stage.columns.iter().any(|c| c == key) {
                        stage.columns.push(key.clone());
                    }
                    values.insert(key.clone(), v);
                }
                stage.rows.insert(step, (e.ts, values));
            }
            _ => {}
        }
    }
    for stage in &mut stages {
        stage.columns.sort_by(|a, b| (a != "loss", a).cmp(&(b != "loss", b)));
    }
    stages
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One stage as CSV: a header `step,<metric>...`, then one line per step (empty cells where a
/// step did not log a metric; non-finite values as `nan`, `inf`, `-inf`).
pub fn to_csv(stage: &StageMetrics) -> String {
    let mut out = String::from("step");
    for c in &stage.columns {
        out.push(',');
        out.push_str(&csv_field(c));
    }
    out.push('\n');
    for (step, (_, values)) in &stage.rows {
        out.push_str(&step.to_string());
        for c in &stage.columns {
            out.push(',');
            if let Some(v) = values.get(c) {
                out.push_str(&if v.is_nan() { "nan".to_string() } else { v.to_string() });
            }
        }
        out.push('\n');
    }
    out
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bitwise: event files are small.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// TensorFlow's masked CRC: rotate right by 15 bits and add a constant.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c(bytes);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited protobuf field.
fn bytes_field(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `Event { wall_time = 1 (double), step = 2 (int64), file_version = 3 | summary = 5 }`.
fn event_proto(wall_time: f64, step: u64, body: &EventBody<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    varint(1 << 3 | 1, &mut out);
    out.extend_from_slice(&wall_time.to_le_bytes());
    if step > 0 {
        varint(2 << 3, &mut out);
        varint(step, &mut out);
    }
    match body {
        EventBody::FileVersion(v) => bytes_field(3, v.as_bytes(), &mut out),
        EventBody::Scalars(values) => {
            // Summary { repeated Value value = 1 }, Value { string tag = 1; float simple_value = 2 }.
            let mut summary = Vec::new();
            for (tag, v) in *values {
                let mut value = Vec::new();
                bytes_field(1, tag.as_bytes(), &mut value);
                varint(2 << 3 | 5, &mut value);
                value.extend_from_slice(&(*v as f32).to_le_bytes());
                bytes_field(1, &value, &mut summary);
            }
            bytes_field(5, &summary, &mut out);
        }
    }
    out
}

enum EventBody<'a> {
    FileVersion(&'a str),
    Scalars(&'a [(&'a str, f64)]),
}

/// One record of an event file: length, its masked CRC, the data, its masked CRC.
fn record(data: &[u8], out: &mut Vec<u8>) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
}

/// One stage as the bytes of a TensorBoard event file: the version record, then one event per
/// step with every metric of that step as a scalar (tag = the metric's name).
pub fn to_tfevents(stage: &StageMetrics) -> Vec<u8> {
    let mut out = Vec::new();
    let first_ts = stage.rows.values().next().map_or(0, |(ts, _)| *ts);
    record(&event_proto(first_ts as f64 / 1000.0, 0, &EventBody::FileVersion("brain.Event:2")), &mut out);
    for (step, (ts, values)) in &stage.rows {
        let scalars: Vec<(&str, f64)> = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        record(&event_proto(*ts as f64 / 1000.0, *step, &EventBody::Scalars(&scalars)), &mut out);
    }
    out
}

/// Writes the export of the run at `run_dir` under `out` (default `<run>/export/<format>`) and
/// prints each file written.
pub fn run(run_dir: &Path, format: Format, out: Option<&Path>, stdout: &mut impl Write) -> Result<()> {
    let run = RunDir::open(run_dir)?;
    let events = EventReader::read_all(&run.events_path())?.events;
    let stages = collect(&events);
    if stages.is_empty() {
        bail!(
            "{}: no metrics logged yet (a run logs them from its first optimizer step); nothing exported",
            run.events_path().display()
        );
    }
    let out: PathBuf = out.map_or_else(|| run.path().join("export").join(format.name()), Path::to_path_buf);
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    for stage in &stages {
        let name = safe_component(&stage.stage);
        let (path, bytes) = match format {
            Format::Csv => (out.join(format!("{name}.csv")), to_csv(stage).into_bytes()),
            Format::Tensorboard => {
                let dir = out.join(&name);
                fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                let first_ts = stage.rows.values().next().map_or(0, |(ts, _)| *ts) / 1000;
                (dir.join(format!("events.out.tfevents.{first_ts}.hone")), to_tfevents(stage))
            }
        };
        fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(
            stdout,
            "{}: {} steps, {} metrics",
            sanitize(&path.display().to_string(), false),
            stage.rows.len(),
            stage.columns.len()
        )?;
    }
    Ok(())
}
