//! Embeds the sample world (`sample-data/`, what `hone demo` runs) into the binary: writes
//! `$OUT_DIR/sample_world.rs`, a sorted list of `(relative path, include_bytes!(..))`, so that an
//! installed `hone` needs no source tree. `gen/` (the generator's pretraining inputs) is left out:
//! the demo does not read it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn files(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).expect("read sample-data").map(|e| e.expect("read sample-data").path()).collect();
    entries.sort();
    for path in entries {
        let relative = path.strip_prefix(root).expect("under sample-data").to_path_buf();
        if relative == Path::new("gen") {
            continue;
        }
        if path.is_dir() {
            files(&path, root, out);
        } else {
            out.push(relative);
        }
    }
}

fn main() {
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("sample-data");
    println!("cargo:rerun-if-changed=sample-data");
    let mut list = Vec::new();
    files(&root, &root, &mut list);
    let mut code = String::from("/// The sample world's files: path relative to its root, contents.\n");
    code.push_str("pub static FILES: &[(&str, &[u8])] = &[\n");
    for relative in &list {
        let name = relative.to_str().expect("sample-data paths are UTF-8").replace('\\', "/");
        let full = root.join(relative);
        let _ = writeln!(code, "    ({name:?}, include_bytes!({:?})),", full.to_str().expect("UTF-8 path"));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("sample_world.rs");
    std::fs::write(out, code).expect("write sample_world.rs");
}
