//! `hone metrics RUN --format csv|tensorboard`: the CSV per stage, and TensorBoard event files read
//! back record by record (length and data CRCs checked, the Event protobufs decoded by a reader
//! written from the format's definition, independent of the writer).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use hone::cli::metrics::{crc32c, masked_crc32c};
use hone::run::Event;

const HONE: &str = env!("CARGO_BIN_EXE_hone");

/// A run of two stages whose worker crashed after step 3 and resumed from the checkpoint at 2:
/// the step-3 metrics logged before the crash are superseded by those logged after.
fn run_dir(dir: &Path) {
    std::fs::write(dir.join("run.toml"), "").unwrap();
    let mut events = vec![
        Event::new("run_started", None, Some(0)).with("stages", serde_json::json!(["sft", "dpo"])),
        Event::new("stage_started", Some("sft"), Some(0)),
    ];
    for step in 1..=3u64 {
        events.push(
            Event::new("metrics", Some("sft"), Some(step))
                .with("loss", 3.0 - step as f64 * 0.5)
                .with("lr", 1e-3)
                .with("note", "text is not a metric"),
        );
    }
    events.push(Event::new("resumed", None, Some(2)).with("from_step", 2u64));
    events.push(Event::new("metrics", Some("sft"), Some(3)).with("loss", 1.25).with("lr", 1e-3));
    events.push(Event::new("stage_started", Some("dpo"), Some(3)));
    for step in 4..=5u64 {
        events.push(
            Event::new("metrics", Some("dpo"), Some(step))
                .with("loss", 0.69)
                .with("rewards/margins", step as f64 / 10.0),
        );
    }
    let mut text = String::new();
    for (i, mut e) in events.into_iter().enumerate() {
        e.ts = 1_700_000_000_000 + i as u64 * 1000;
        text.push_str(&e.to_json().unwrap());
        text.push('\n');
    }
    std::fs::write(dir.join("events.jsonl"), text).unwrap();
}

#[test]
#[allow(clippy::manual_rotate)] // the mask spelled as TensorFlow's crc32c.h spells it
fn crc32c_matches_the_published_check_value() {
    // The CRC-32C check value of "123456789" (RFC 3720, B.4 lists the same polynomial).
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(b""), 0);
    // TensorFlow's mask: ((crc >> 15) | (crc << 17)) + 0xa282ead8, wrapping.
    let crc = crc32c(b"123456789");
    assert_eq!(masked_crc32c(b"123456789"), ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8));
}

#[test]
fn csv_has_one_file_per_stage_with_superseded_steps_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    run_dir(tmp.path());
    let out = tmp.path().join("out");
    let status = Command::new(HONE)
        .args(["metrics", tmp.path().to_str().unwrap(), "--format", "csv", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let sft = std::fs::read_to_string(out.join("sft.csv")).unwrap();
    assert_eq!(sft, "step,loss,lr\n1,2.5,0.001\n2,2,0.001\n3,1.25,0.001\n");
    let dpo = std::fs::read_to_string(out.join("dpo.csv")).unwrap();
    assert_eq!(dpo, "step,loss,rewards/margins\n4,0.69,0.4\n5,0.69,0.5\n");
}

fn varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = bytes[*at];
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// The fields of one protobuf message: field number → values (varints and fixed widths as u64,
/// length-delimited as bytes).
#[derive(Debug, Default)]
struct Message {
    ints: BTreeMap<u64, Vec<u64>>,
    bytes: BTreeMap<u64, Vec<Vec<u8>>>,
}

fn decode(bytes: &[u8]) -> Message {
    let mut m = Message::default();
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at);
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => m.ints.entry(field).or_default().push(varint(bytes, &mut at)),
            1 => {
                m.ints.entry(field).or_default().push(u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()));
                at += 8;
            }
            5 => {
                m.ints
                    .entry(field)
                    .or_default()
                    .push(u64::from(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())));
                at += 4;
            }
            2 => {
                let len = varint(bytes, &mut at) as usize;
                m.bytes.entry(field).or_default().push(bytes[at..at + len].to_vec());
                at += len;
            }
            other => panic!("unexpected wire type {other}"),
        }
    }
    m
}

/// Every record of a TFRecord file, CRCs checked.
fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        assert_eq!(len_crc, masked_crc32c(len_bytes), "length CRC of the record at byte {at}");
        let data = &bytes[at + 12..at + 12 + len];
        let data_crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
        assert_eq!(data_crc, masked_crc32c(data), "data CRC of the record at byte {at}");
        out.push(data.to_vec());
        at += 16 + len;
    }
    out
}

#[test]
fn tensorboard_event_files_read_back_as_scalars() {
    let tmp = tempfile::tempdir().unwrap();
    run_dir(tmp.path());
    let status =
        Command::new(HONE).args(["metrics", tmp.path().to_str().unwrap(), "--format", "tensorboard"]).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let dir = tmp.path().join("export/tensorboard/sft");
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1);
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("events.out.tfevents."), "TensorBoard finds files by this prefix: {name}");
    let events: Vec<Message> = records(&std::fs::read(&files[0]).unwrap()).iter().map(|r| decode(r)).collect();
    // The first event names the file version.
    assert_eq!(events[0].bytes[&3][0], b"brain.Event:2");
    let mut scalars: Vec<(u64, String, f32, f64)> = Vec::new();
    for e in &events[1..] {
        let wall_time = f64::from_bits(e.ints[&1][0]);
        let step = e.ints[&2][0];
        let summary = decode(&e.bytes[&5][0]);
        for value in &summary.bytes[&1] {
            let v = decode(value);
            let tag = String::from_utf8(v.bytes[&1][0].clone()).unwrap();
            let simple = f32::from_bits(v.ints[&2][0] as u32);
            scalars.push((step, tag, simple, wall_time));
        }
    }
    let loss: Vec<(u64, f32)> = scalars.iter().filter(|s| s.1 == "loss").map(|s| (s.0, s.2)).collect();
    assert_eq!(loss, vec![(1, 2.5), (2, 2.0), (3, 1.25)]);
    assert!(scalars.iter().all(|s| s.1 != "note"), "text fields are not scalars");
    assert!(scalars.iter().all(|s| s.3 > 1.7e9 && s.3 < 1.8e9), "wall times in seconds");
}
