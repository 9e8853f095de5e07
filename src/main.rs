//! The `hone` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    hone::cli::main()
}
