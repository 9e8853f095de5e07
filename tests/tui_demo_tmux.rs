//! Issue 10's first-run proof in a real terminal (a tmux pane, 120x40): `hone demo` and bare
//! `hone` (answering "Y" to the demo offer) show the dashboard while the detached worker trains,
//! `q` detaches and the worker keeps running, and `hone attach` comes back to the same run. In the
//! demo, pane 3 shows the sample world's candidate pairs at once and `a`/`b`/`t` append to the
//! run's `labels.jsonl`.
//! Both once hung on a blank screen: the demo held the stdout lock while the dashboard's UI
//! thread waited for it.
//!
//! Each test runs in an empty temporary directory with `HOME` and `XDG_DATA_HOME` pointing at
//! empty temporary directories, as a new user's machine would look. Every wait polls with a
//! deadline; the worker is killed however the test ends.
//!
//! Without tmux the tests fail loudly; set `HONE_SKIP_TMUX=1` to skip them instead.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hone::run::{RunDir, WorkerLock};

mod live;
use live::{tmux_available, HONE};

const WAIT: Duration = Duration::from_secs(60);

/// The tmux server on a private socket and the detached worker, both ended however the test ends.
struct Session {
    socket: String,
    runs: std::path::PathBuf,
}

impl Session {
    fn start(name: &str, runs: &Path, command: &str) -> Session {
        let s = Session { socket: format!("hone-{name}-{}", std::process::id()), runs: runs.to_path_buf() };
        let started = s.cmd(&["new-session", "-d", "-x", "120", "-y", "40", "-s", "hone", command]);
        assert!(started.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&started.stderr));
        s
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux").args(["-L", &self.socket, "-f", "/dev/null"]).args(args).output().unwrap()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "hone"];
        args.extend_from_slice(keys);
        let sent = self.cmd(&args);
        assert!(sent.status.success(), "tmux send-keys: {}", String::from_utf8_lossy(&sent.stderr));
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "hone"]).stdout).into_owned()
    }

    /// Polls the pane until it shows every one of `texts`, or panics with the last screen.
    fn wait_for(&self, texts: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if texts.iter().all(|t| screen.contains(t)) {
                return screen;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {texts:?}; the pane shows:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The run the worker trains, once its directory exists.
    fn run(&self) -> RunDir {
        live::only_run(&self.runs, WAIT)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The worker is this test's process (started through hone); end it by its pid.
        for run in RunDir::list(&self.runs).unwrap_or_default() {
            if let Ok(pid) = std::fs::read_to_string(run.worker_pid_path()) {
                let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
            }
        }
        let _ = self.cmd(&["kill-server"]);
    }
}

/// An empty home and data directory, as on a new user's machine.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::tempdir().unwrap();
        for d in ["home", "data", "work"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        Home { dir }
    }

    fn work(&self) -> std::path::PathBuf {
        self.dir.path().join("work")
    }

    /// `cd work && HOME=home XDG_DATA_HOME=data ...`, for a shell command line.
    fn prefix(&self) -> String {
        let p = self.dir.path();
        format!(
            "cd '{}' && export HOME='{}' XDG_DATA_HOME='{}' XDG_CONFIG_HOME='{}/config' && unset HONE_RUNS_DIR && ",
            self.work().display(),
            p.join("home").display(),
            p.join("data").display(),
            p.join("home").display(),
        )
    }
}

/// The dashboard of `run` is on the screen: its id in the header, the live sample panel, the
/// pipeline strip.
fn dashboard_of(run: &RunDir) -> [&str; 3] {
    [run.id(), "Live sample", "✓ base"]
}

/// After `q`: the shell got the exit status, the alternate screen is gone, the worker still runs.
fn detached_and_still_training(s: &Session, run: &RunDir, exited: &str) {
    let screen = s.wait_for(&[exited]);
    assert!(screen.contains(&format!("{exited} 0")), "the command failed:\n{screen}");
    assert!(!screen.contains("Live sample"), "the alternate screen is gone after detaching:\n{screen}");
    assert!(screen.contains("keeps training"), "detaching says the worker keeps training:\n{screen}");
    let live = WorkerLock::is_live(run).unwrap();
    assert!(live.is_some(), "the worker is still running after `q`:\n{screen}");
}

#[test]
fn hone_demo_shows_the_dashboard_q_detaches_and_attach_comes_back() {
    if !tmux_available("the interactive `hone demo` test") {
        return;
    }
    let home = Home::new();
    let runs = home.work().join("runs");
    // Long enough that the worker is still training when the test detaches and reattaches.
    let command = format!(
        "{}'{HONE}' demo --max-steps 200; echo \"DEMO-EXITED $?\"; read go; '{HONE}' attach; echo \"ATTACH-EXITED $?\"; \
         sleep 60",
        home.prefix()
    );
    let s = Session::start("demo", &runs, &command);
    let run = s.run();
    s.wait_for(&dashboard_of(&run));

    // Pane 3 shows the sample world's pairs at once; a, b and t append to the run's labels.jsonl.
    s.keys(&["3"]);
    s.wait_for(&["a · left", "b · right", "labeled 0 "]);
    for (key, n) in [("a", 1), ("b", 2), ("t", 3)] {
        s.keys(&[key]);
        s.wait_for(&[&format!("labeled {n} ")]);
    }
    let labels = std::fs::read_to_string(run.labels_path()).unwrap();
    let records: Vec<serde_json::Value> = labels.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 3, "{labels}");
    assert!(records[..2].iter().all(|r| r["chosen"].is_string() || r["chosen"].is_array()), "{labels}");
    s.keys(&["1"]);
    s.wait_for(&dashboard_of(&run));
    s.keys(&["q"]);
    detached_and_still_training(&s, &run, "DEMO-EXITED");

    // `hone attach` (the newest run of ./runs) shows the same run again.
    s.keys(&["Enter"]);
    s.wait_for(&dashboard_of(&run));
    s.keys(&["q"]);
    let screen = s.wait_for(&["ATTACH-EXITED"]);
    assert!(screen.contains("ATTACH-EXITED 0"), "`hone attach` failed:\n{screen}");
    assert!(WorkerLock::is_live(&run).unwrap().is_some(), "the worker still runs:\n{screen}");
}

#[test]
fn bare_hone_answering_yes_shows_the_demo_dashboard() {
    if !tmux_available("the interactive bare `hone` test") {
        return;
    }
    let home = Home::new();
    let runs = home.work().join("runs");
    let command = format!(
        "{}'{HONE}'; echo \"HONE-EXITED $?\"; read go; '{HONE}'; echo \"AGAIN-EXITED $?\"; sleep 60",
        home.prefix()
    );
    let s = Session::start("bare", &runs, &command);
    s.wait_for(&["Start the demo now? [Y/n]"]);
    s.keys(&["Y", "Enter"]);
    let run = s.run();
    s.wait_for(&dashboard_of(&run));
    s.keys(&["q"]);
    detached_and_still_training(&s, &run, "HONE-EXITED");

    // Bare `hone` again opens the newest run: the demo's, still training.
    s.keys(&["Enter"]);
    s.wait_for(&dashboard_of(&run));
    s.keys(&["q"]);
    let screen = s.wait_for(&["AGAIN-EXITED"]);
    assert!(screen.contains("AGAIN-EXITED 0"), "bare `hone` failed:\n{screen}");
    assert!(WorkerLock::is_live(&run).unwrap().is_some(), "the worker still runs:\n{screen}");
}
