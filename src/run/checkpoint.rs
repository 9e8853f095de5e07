//! Writing one checkpoint: `CheckpointWriter::begin` makes `checkpoints/.tmp-step-NNNNNN-<pid>/`,
//! files are written into it while their sizes and sha256 are tracked, and
//! `PendingCheckpoint::finish` writes MANIFEST.json, fsyncs everything and renames the directory
//! to `step-NNNNNN`. A crash at any point leaves either no `step-NNNNNN` or a complete one.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::checkpoints::{Checkpoint, Manifest, ManifestFile, MANIFEST, TMP_PREFIX};
use super::dir::{step_dir_name, RunDir};
use super::error::RunError;
use super::fsutil::{check_component, fsync_dir, fsync_file, IoContext};
use crate::model::FileOut;

/// The trainer state's file in a checkpoint (JSON).
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
/// AdamW's moments' file in a checkpoint (safetensors).
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The reward model's weights in a checkpoint of a reward-model stage.
pub const REWARD_MODEL_FILE: &str = "reward_model.safetensors";

/// Entry point for writing checkpoints.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointWriter;

impl CheckpointWriter {
    /// Starts checkpoint `step` of `run` in a fresh temporary directory. Fails with
    /// [`RunError::CheckpointExists`] if `step-NNNNNN` already exists.
    pub fn begin(run: &RunDir, step: u64) -> Result<PendingCheckpoint, RunError> {
        let parent = run.checkpoints_dir();
        let final_dir = run.checkpoint_dir(step);
        if final_dir.exists() {
            return Err(RunError::CheckpointExists { path: final_dir });
        }
        if !parent.is_dir() {
            fs::create_dir_all(&parent).ctx("create", &parent)?;
            fsync_dir(run.path())?;
        }
        let base = format!("{TMP_PREFIX}{}-{}", step_dir_name(step), std::process::id());
        let mut n = 1u32;
        let tmp_dir = loop {
            let name = if n == 1 { base.clone() } else { format!("{base}-{n}") };
            let dir = parent.join(name);
            match fs::create_dir(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(e).ctx("create", &dir),
            }
        };
        Ok(PendingCheckpoint { step, tmp_dir, final_dir, names: BTreeSet::new(), files: Vec::new(), done: false })
    }
}

/// A checkpoint being written. Dropping it without [`PendingCheckpoint::finish`] removes its
/// temporary directory; a crash leaves that directory behind, which listings ignore and
/// [`crate::run::clean_incomplete`] removes.
#[derive(Debug)]
pub struct PendingCheckpoint {
    step: u64,
    tmp_dir: PathBuf,
    final_dir: PathBuf,
    names: BTreeSet<String>,
    files: Vec<Written>,
    done: bool,
}

#[derive(Debug)]
struct Written {
    entry: ManifestFile,
    /// Set when a write or flush failed; `finish` then refuses.
    failed: bool,
}

impl PendingCheckpoint {
    /// The step this checkpoint is for.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The temporary directory files are written into.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp_dir
    }

    /// Writes a whole file named `name` (a plain file name, not MANIFEST.json, each name once).
    pub fn write_file(&mut self, name: &str, bytes: &[u8]) -> Result<(), RunError> {
        self.write_with(name, |file| file.write_all(bytes))
    }

    /// Writes a file named `name` from `contents`, tensors serialised as they are written (see
    /// [`PendingCheckpoint::write_file`]).
    pub fn write_out(&mut self, name: &str, contents: &FileOut) -> Result<(), RunError> {
        self.write_with(name, |file| contents.write_to(file))
    }

    fn write_with(
        &mut self,
        name: &str,
        write: impl FnOnce(&mut CheckpointFile<'_>) -> io::Result<()>,
    ) -> Result<(), RunError> {
        let mut file = self.create_file(name)?;
        let path = file.path.clone();
        write(&mut file).ctx("write", &path)?;
        file.close()?;
        crate::fault::point("checkpoint.file");
        Ok(())
    }

    /// Creates a file named `name` and returns a writer that hashes and counts what passes through
    /// it. Its size and sha256 are recorded when the writer is closed or dropped; call
    /// [`CheckpointFile::close`] to see a flush error (after a dropped writer's flush error,
    /// `finish` refuses).
    pub fn create_file(&mut self, name: &str) -> Result<CheckpointFile<'_>, RunError> {
        check_component(&self.tmp_dir, name)?;
        if name == MANIFEST {
            return Err(RunError::InvalidName {
                path: self.tmp_dir.clone(),
                name: name.to_string(),
                reason: "reserved for the manifest",
            });
        }
        if !self.names.insert(name.to_string()) {
            return Err(RunError::InvalidName {
                path: self.tmp_dir.clone(),
                name: name.to_string(),
                reason: "already written to this checkpoint",
            });
        }
        let path = self.tmp_dir.join(name);
        let file = OpenOptions::new().write(true).create_new(true).open(&path).ctx("create", &path)?;
        Ok(CheckpointFile {
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            size: 0,
            failed: false,
            name: name.to_string(),
            path,
            sink: &mut self.files,
        })
    }

    /// Completes the checkpoint: writes MANIFEST.json `{step, files:[{name,size,sha256}], meta}`,
    /// fsyncs every file and the temporary directory, renames it to `step-NNNNNN` (refusing if that
    /// exists) and fsyncs `checkpoints/`.
    pub fn finish(mut self, meta: serde_json::Value) -> Result<Checkpoint, RunError> {
        if let Some(bad) = self.files.iter().find(|w| w.failed) {
            return Err(RunError::BadCheckpoint {
                path: self.tmp_dir.join(&bad.entry.name),
                reason: "a write to this file failed".to_string(),
            });
        }
        for written in &self.files {
            fsync_file(&self.tmp_dir.join(&written.entry.name))?;
        }
        let files = self.files.iter().map(|w| w.entry.clone()).collect();
        let manifest = Manifest { step: self.step, files, meta };
        let manifest_path = self.tmp_dir.join(MANIFEST);
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|source| RunError::Serialize { path: manifest_path.clone(), source })?;
        let mut file =
            OpenOptions::new().write(true).create_new(true).open(&manifest_path).ctx("create", &manifest_path)?;
        file.write_all(&json).ctx("write", &manifest_path)?;
        file.sync_all().ctx("fsync", &manifest_path)?;
        drop(file);
        fsync_dir(&self.tmp_dir)?;
        crate::fault::point("checkpoint.manifest");
        // rename(2) would replace an *empty* directory silently; a complete checkpoint is never empty,
        // and this check refuses the rest. Only the lock-holding worker writes checkpoints.
        if self.final_dir.exists() {
            return Err(RunError::CheckpointExists { path: self.final_dir.clone() });
        }
        fs::rename(&self.tmp_dir, &self.final_dir).ctx("rename into place", &self.final_dir)?;
        self.done = true;
        let parent = self.final_dir.parent().map(Path::to_path_buf).unwrap_or_default();
        fsync_dir(&parent)?;
        Ok(Checkpoint { step: self.step, dir: self.final_dir.clone(), manifest })
    }
}

impl Drop for PendingCheckpoint {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.tmp_dir);
        }
    }
}

/// A file being written into a [`PendingCheckpoint`]; implements [`Write`], buffered internally.
#[derive(Debug)]
pub struct CheckpointFile<'a> {
    out: BufWriter<File>,
    hasher: Sha256,
    size: u64,
    failed: bool,
    name: String,
    path: PathBuf,
    sink: &'a mut Vec<Written>,
}

impl CheckpointFile<'_> {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Flushes the file and records it in the pending checkpoint.
    pub fn close(mut self) -> Result<(), RunError> {
        let result = self.out.flush().ctx("write", &self.path);
        self.failed |= result.is_err();
        result
        // `drop` records the entry.
    }
}

impl Write for CheckpointFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.out.write(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.size += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush().inspect_err(|_| self.failed = true)
    }
}

impl Drop for CheckpointFile<'_> {
    fn drop(&mut self) {
        if self.out.flush().is_err() {
            self.failed = true;
        }
        let sha256 = crate::hex::encode(&std::mem::take(&mut self.hasher).finalize());
        let entry = ManifestFile { name: std::mem::take(&mut self.name), size: self.size, sha256 };
        self.sink.push(Written { entry, failed: self.failed });
    }
}
