//! Shutdown: first SIGINT/SIGTERM sets the flag, the second exits 130/143, SIGHUP is ignored.
//! Each case runs in a child process (this test binary re-invoked), since the second signal ends it.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use hone::run::Shutdown;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::low_level::raise;

const CHILD_ENV: &str = "HONE_RUN_SIGNAL_CHILD";

fn child_main(first: i32, second: i32) {
    let shutdown = Shutdown::install().unwrap();
    let again = Shutdown::install().unwrap();
    assert!(!shutdown.requested());
    raise(SIGHUP).unwrap();
    println!("SURVIVED-HUP");
    raise(first).unwrap();
    assert!(shutdown.requested() && again.requested());
    println!("GRACEFUL");
    raise(second).unwrap();
    println!("STILL-ALIVE");
}

fn run_child(test: &str) -> (Option<i32>, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn second_sigint_exits_130() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child_main(SIGINT, SIGINT);
    }
    let (code, out) = run_child("second_sigint_exits_130");
    assert_eq!(code, Some(130), "{out}");
    assert!(out.contains("SURVIVED-HUP") && out.contains("GRACEFUL") && !out.contains("STILL-ALIVE"), "{out}");
}

#[test]
fn sigterm_after_sigint_exits_143() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child_main(SIGINT, SIGTERM);
    }
    let (code, out) = run_child("sigterm_after_sigint_exits_143");
    assert_eq!(code, Some(143), "{out}");
    assert!(out.contains("GRACEFUL") && !out.contains("STILL-ALIVE"), "{out}");
}

#[test]
fn request_arms_the_hard_exit_too() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let shutdown = Shutdown::install().unwrap();
        shutdown.request();
        println!("REQUESTED");
        raise(SIGTERM).unwrap();
        println!("STILL-ALIVE");
        return;
    }
    let (code, out) = run_child("request_arms_the_hard_exit_too");
    assert_eq!(code, Some(143), "{out}");
    assert!(out.contains("REQUESTED") && !out.contains("STILL-ALIVE"), "{out}");
}
