//! Reading and maintaining `checkpoints/`: the MANIFEST.json format, listing complete checkpoints,
//! verifying them, pruning old ones and removing temporaries left by crashes.
//!
//! A directory counts as a complete checkpoint when its name is `step-NNNNNN`, its MANIFEST.json
//! parses and names the same step, and every file it lists exists with the listed size.
//! [`Checkpoint::verify`] also checks every sha256. Anything else in `checkpoints/` is ignored by
//! listings: `.tmp-*` (being written, or left by a crash) and `.trash-*` (being deleted).

use std::fs::{self, File};
use std::io::{self, Read};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::dir::{parse_step_dir_name, step_dir_name, RunDir};
use super::error::RunError;
use super::fsutil::{check_component, fsync_dir, IoContext};
use super::lock::WorkerLock;

/// The manifest's file name inside a checkpoint directory.
pub(crate) const MANIFEST: &str = "MANIFEST.json";
/// Prefix of checkpoints being written.
pub(crate) const TMP_PREFIX: &str = ".tmp-";
/// Bytes read between two calls of [`Checkpoint::verify_with`]'s `between`: hashing one takes
/// about a millisecond.
const VERIFY_BLOCK: usize = 1 << 20;
/// Prefix of checkpoints being deleted.
const TRASH_PREFIX: &str = ".trash-";

/// MANIFEST.json of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The step the checkpoint was taken at.
    pub step: u64,
    /// Every file of the checkpoint except the manifest, in write order.
    pub files: Vec<ManifestFile>,
    /// Caller-defined metadata (e.g. metrics, config hash).
    pub meta: serde_json::Value,
}

/// One file listed in a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// File name inside the checkpoint directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex sha256 of the contents.
    pub sha256: String,
}

/// A complete checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The step it was taken at.
    pub step: u64,
    /// Its directory, `checkpoints/step-NNNNNN`.
    pub dir: PathBuf,
    /// Its parsed MANIFEST.json.
    pub manifest: Manifest,
}

impl Checkpoint {
    /// Opens the checkpoint in `dir`, checking it is complete (see the module docs) but not the
    /// hashes. The error says what is missing or wrong.
    pub fn open(dir: &Path) -> Result<Checkpoint, RunError> {
        let bad = |path: &Path, reason: String| RunError::BadCheckpoint { path: path.to_path_buf(), reason };
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let step = parse_step_dir_name(&name).ok_or_else(|| bad(dir, "name is not step-NNNNNN".to_string()))?;
        let manifest_path = dir.join(MANIFEST);
        let text = fs::read(&manifest_path).ctx("read", &manifest_path)?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| bad(&manifest_path, format!("unparsable manifest: {e}")))?;
        if manifest.step != step {
            return Err(bad(&manifest_path, format!("manifest says step {}", manifest.step)));
        }
        for file in &manifest.files {
            if check_component(dir, &file.name).is_err() || file.name == MANIFEST {
                return Err(bad(&manifest_path, format!("manifest lists an invalid file name {:?}", file.name)));
            }
            let path = dir.join(&file.name);
            let meta = fs::metadata(&path).map_err(|e| bad(&path, format!("listed file unreadable: {e}")))?;
            if !meta.is_file() || meta.len() != file.size {
                return Err(bad(&path, format!("size {} but the manifest says {}", meta.len(), file.size)));
            }
        }
        Ok(Checkpoint { step, dir: dir.to_path_buf(), manifest })
    }

    /// The path of file `name` in this checkpoint.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Re-reads every listed file and checks its size and sha256.
    pub fn verify(&self) -> Result<(), RunError> {
        self.verify_with(&mut |_, _| ControlFlow::Continue(())).map(|_| ())
    }

    /// [`Checkpoint::verify`], asking `between(done, total)` (bytes read of all listed) after
    /// every block read, so a caller can end a long verification (a large model's checkpoint)
    /// there: `Break` stops it unfinished, and nothing is known about the rest.
    pub fn verify_with(
        &self,
        between: &mut dyn FnMut(u64, u64) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, RunError> {
        let total: u64 = self.manifest.files.iter().map(|f| f.size).sum();
        let mut done = 0u64;
        let mut buf = vec![0u8; VERIFY_BLOCK];
        for file in &self.manifest.files {
            let path = self.path(&file.name);
            let mut f = File::open(&path).ctx("open", &path)?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            loop {
                let n = match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).ctx("read", &path),
                };
                hasher.update(&buf[..n]);
                size += n as u64;
                done += n as u64;
                if between(done, total).is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            let sha256 = crate::hex::encode(&hasher.finalize());
            if size != file.size || sha256 != file.sha256 {
                return Err(RunError::BadCheckpoint {
                    path,
                    reason: format!(
                        "content is {size} bytes with sha256 {sha256}; the manifest says {} bytes with sha256 {}",
                        file.size, file.sha256
                    ),
                });
            }
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// Every complete checkpoint of `run`, sorted by step. Incomplete or damaged `step-*` directories
/// and temporaries are left out (open one with [`Checkpoint::open`] to see why).
pub fn list_checkpoints(run: &RunDir) -> Result<Vec<Checkpoint>, RunError> {
    let dir = run.checkpoints_dir();
    let mut out: Vec<Checkpoint> = read_names(&dir)?
        .into_iter()
        .filter(|name| parse_step_dir_name(name).is_some())
        .filter_map(|name| Checkpoint::open(&dir.join(name)).ok())
        .collect();
    out.sort_by_key(|c| c.step);
    Ok(out)
}

/// The complete checkpoint with the highest step, if any.
pub fn latest_checkpoint(run: &RunDir) -> Result<Option<Checkpoint>, RunError> {
    Ok(list_checkpoints(run)?.pop())
}

/// Removes `.tmp-*` and `.trash-*` directories left in `checkpoints/` by crashed writers or
/// deleters. Takes the worker lock because it would also remove a checkpoint being written by a
/// live worker. Returns the removed directory names.
pub fn clean_incomplete(lock: &WorkerLock) -> Result<Vec<String>, RunError> {
    let dir = lock.run().checkpoints_dir();
    let mut removed = Vec::new();
    for name in read_names(&dir)? {
        if name.starts_with(TMP_PREFIX) || name.starts_with(TRASH_PREFIX) {
            let path = dir.join(&name);
            remove_any(&path)?;
            removed.push(name);
        }
    }
    if !removed.is_empty() {
        fsync_dir(&dir)?;
    }
    Ok(removed)
}

/// Deletes complete checkpoints older than the newest `keep_last`, except step `best` (if given
/// and present). Each is first renamed to `.trash-step-NNNNNN-<pid>` (and `checkpoints/` fsynced),
/// then removed, so a crash mid-delete never leaves something that looks like a complete
/// checkpoint. Returns the deleted steps, ascending.
pub fn prune(lock: &WorkerLock, keep_last: usize, best: Option<u64>) -> Result<Vec<u64>, RunError> {
    let all = list_checkpoints(lock.run())?;
    let cut = all.len().saturating_sub(keep_last);
    let doomed: Vec<&Checkpoint> = all[..cut].iter().filter(|c| Some(c.step) != best).collect();
    delete(lock, &doomed)
}

/// Deletes the complete checkpoints after `step`: resuming from an older checkpoint abandons
/// the future they recorded, and the resumed run will write its own. Same trash-first deletion
/// as [`prune`]. Returns the deleted steps.
pub fn discard_after(lock: &WorkerLock, step: u64) -> Result<Vec<u64>, RunError> {
    let all = list_checkpoints(lock.run())?;
    let doomed: Vec<&Checkpoint> = all.iter().filter(|c| c.step > step).collect();
    delete(lock, &doomed)
}

fn delete(lock: &WorkerLock, doomed: &[&Checkpoint]) -> Result<Vec<u64>, RunError> {
    let dir = lock.run().checkpoints_dir();
    let mut deleted = Vec::new();
    for ckpt in doomed {
        let trash = dir.join(format!("{TRASH_PREFIX}{}-{}", step_dir_name(ckpt.step), std::process::id()));
        if trash.exists() {
            remove_any(&trash)?;
        }
        fs::rename(&ckpt.dir, &trash).ctx("rename to trash", &ckpt.dir)?;
        fsync_dir(&dir)?;
        fs::remove_dir_all(&trash).ctx("remove", &trash)?;
        deleted.push(ckpt.step);
    }
    if !deleted.is_empty() {
        fsync_dir(&dir)?;
    }
    Ok(deleted)
}

/// Names of the entries of `dir`; a missing directory has none.
fn read_names(dir: &Path) -> Result<Vec<String>, RunError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx("list", dir),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.ctx("list", dir)?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Removes a directory tree or a file.
fn remove_any(path: &Path) -> Result<(), RunError> {
    let meta = fs::symlink_metadata(path).ctx("stat", path)?;
    if meta.is_dir() {
        fs::remove_dir_all(path).ctx("remove", path)
    } else {
        fs::remove_file(path).ctx("remove", path)
    }
}
