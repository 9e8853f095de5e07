//! The sample world built into the binary (by `build.rs`, from `sample-data/`) and its unpacking
//! into hone's data directory, so that `hone demo` works from an installed binary with no source
//! tree. Each embedded version unpacks into its own directory `sample-<hash>` (the first 16 hex
//! digits of a SHA-256 over every path and its bytes): a new hone never reuses an older world,
//! and the runs of an older one keep the files their `run.toml` names. Unpacking writes a
//! temporary directory beside it and renames it into place, so a crash or a concurrent `hone demo`
//! never leaves a half-written world under the final name.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/sample_world.rs"));
}

/// The embedded files: path relative to the world's root (`/`-separated), contents.
pub fn files() -> &'static [(&'static str, &'static [u8])] {
    embedded::FILES
}

/// The version key of the embedded world: 16 hex digits of a SHA-256 over every path and its
/// contents (lengths included, so no two different worlds hash alike by shifting bytes).
pub fn version() -> String {
    let mut hasher = Sha256::new();
    for (path, bytes) in files() {
        hasher.update((path.len() as u64).to_le_bytes());
        hasher.update(path.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    crate::hex::encode(&hasher.finalize()[..8])
}

/// Where the embedded world unpacks under `data_dir`.
pub fn unpacked_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(format!("sample-{}", version()))
}

/// Whether `dir` holds every embedded file with its exact size (a world someone truncated or
/// partly deleted is unpacked again).
fn complete(dir: &Path) -> bool {
    files().iter().all(|(path, bytes)| fs::metadata(dir.join(path)).is_ok_and(|m| m.len() == bytes.len() as u64))
}

/// Writes every embedded file under `dir` (which must not exist), fsyncing each.
fn write_all(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    for (path, bytes) in files() {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut file = fs::File::create(&target)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    Ok(())
}

/// The embedded world unpacked under `data_dir` (created if needed); unpacks it when it is
/// missing or incomplete. Returns the world's directory.
pub fn ensure_unpacked(data_dir: &Path) -> Result<PathBuf> {
    let target = unpacked_dir(data_dir);
    if complete(&target) {
        return Ok(target);
    }
    fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create hone's data directory {}", data_dir.display()))?;
    let temp = data_dir.join(format!(".unpacking-{}-{:08x}", std::process::id(), rand::random::<u32>()));
    let written = write_all(&temp);
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&temp);
        return Err(e).with_context(|| format!("cannot unpack the sample world into {}", temp.display()));
    }
    if target.exists() {
        // Incomplete (checked above): set it aside, then put the fresh copy in its place.
        let stale = data_dir.join(format!(".stale-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        if fs::rename(&target, &stale).is_ok() {
            let _ = fs::remove_dir_all(&stale);
        }
    }
    match fs::rename(&temp, &target) {
        Ok(()) => Ok(target),
        // Another hone unpacked the same version meanwhile: use its copy.
        Err(_) if complete(&target) => {
            let _ = fs::remove_dir_all(&temp);
            Ok(target)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&temp);
            Err(e).with_context(|| format!("cannot move the unpacked sample world to {}", target.display()))
        }
    }
}
