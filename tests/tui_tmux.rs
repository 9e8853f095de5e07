//! A real terminal: a tmux pane (120x40) runs this test binary's `tmux_child`, which attaches to a
//! prepared run directory. The test polls `capture-pane` for the expected text (never a fixed
//! sleep), switches panes with keys, presses `q` and checks that the process exited cleanly and
//! left the alternate screen. Without tmux it fails unless HONE_SKIP_TMUX=1 (then it says it skipped).

mod tui_support;

mod live;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "HONE_TUI_TMUX_RUN_DIR";

/// Runs inside the tmux pane only (the parent test passes `--ignored --exact tmux_child`).
#[test]
#[ignore = "the tmux test runs this inside a tmux pane"]
fn tmux_child() {
    let run = std::env::var(CHILD_ENV).expect("started by tmux_attach_shows_the_run_and_q_detaches");
    hone::tui::attach(Path::new(&run), None).expect("attach");
}

/// The tmux server on a private socket, killed when the test ends however it ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux").args(["-L", &self.socket, "-f", "/dev/null"]).args(args).output().expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "hone"]).stdout).into_owned()
    }

    /// Polls the pane until it shows every one of `texts`, or panics with the last screen.
    fn wait_for(&self, texts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if texts.iter().all(|t| screen.contains(t)) {
                return screen;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {texts:?}; the pane shows:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn tmux_attach_shows_the_run_and_q_detaches() {
    if !live::tmux_available("the real-terminal attach test") {
        return;
    }
    let runs = tempfile::tempdir().expect("tempdir");
    let run_dir = runs.path().join("20250220-000000-demo");
    std::fs::create_dir(&run_dir).expect("mkdir");
    let mut file = std::fs::File::create(run_dir.join("events.jsonl")).expect("create events.jsonl");
    for event in tui_support::completed() {
        writeln!(file, "{}", event.to_json().expect("serialize")).expect("write");
    }
    drop(file);

    let exe = std::env::current_exe().expect("the test binary");
    let command = format!(
        "'{}' --ignored --exact tmux_child --nocapture --test-threads=1; echo \"EXITED $?\"; sleep 30",
        exe.display()
    );
    let tmux = Tmux { socket: format!("hone-tui-test-{}", std::process::id()) };
    let env = format!("{CHILD_ENV}={}", run_dir.display());
    let started = tmux.cmd(&["new-session", "-d", "-x", "120", "-y", "40", "-s", "hone", "-e", &env, &command]);
    assert!(started.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&started.stderr));

    tmux.wait_for(&["20250220-000000-demo", "completed in 1:06", "✓ safety", "DPO rewards"]);
    tmux.cmd(&["send-keys", "-t", "hone", "2"]);
    tmux.wait_for(&["λ_safe", "0.200 → 0.150 (step 110"]);
    tmux.cmd(&["send-keys", "-t", "hone", "5"]);
    tmux.wait_for(&["▸ 20250220-000000-demo", "completed"]);
    tmux.cmd(&["send-keys", "-t", "hone", "?"]);
    tmux.wait_for(&["detach: leave the TUI; training goes on"]);
    tmux.cmd(&["send-keys", "-t", "hone", "q"]);
    let screen = tmux.wait_for(&["EXITED 0"]);
    assert!(!screen.contains("DPO rewards"), "the alternate screen is gone after detaching:\n{screen}");
}
