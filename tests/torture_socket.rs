//! Hostile neighbours of a live worker's control socket (the tiny fixture model training a long
//! DPO stage): a flood of 10,000 requests, oversized and malformed frames, a byte-by-byte client,
//! clients that connect and never send, a socket replaced by a symlink, a run directory others can
//! write. Through all of it the worker keeps training, its memory stays flat, its owner is still
//! served, and nothing of it listens on TCP or UDP. (Another uid's client: `tests/run_control.rs`.)
#![allow(clippy::unwrap_used)]

mod live;
mod torture;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hone::run::control::{socket_path, Client, Reply, Request, MAX_CONNECTIONS, MAX_PENDING, MAX_REQUEST_BYTES};
use hone::run::RunDir;
use live::{dpo_pipeline, events, DpoRun, HONE};

const WAIT: Duration = Duration::from_secs(180);

fn spawn(args: &[&str]) -> Child {
    Command::new(HONE).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn max_step(run: &RunDir) -> u64 {
    events(run).iter().filter(|e| e.event == "metrics").filter_map(|e| e.step).max().unwrap_or(0)
}

/// Waits until the worker has trained `more` steps past `from`.
fn trains_on(run: &RunDir, from: u64, more: u64, what: &str) -> u64 {
    live::wait_for(what, WAIT, || {
        let now = max_step(run);
        (now >= from + more).then_some(now)
    })
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Inodes of the sockets `pid` holds open.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Inodes of every socket in a `/proc/net/*` table (the inode is the tenth column of tcp/udp/raw,
/// the seventh of unix).
fn table_inodes(table: &str) -> HashSet<u64> {
    let column = if table == "unix" { 6 } else { 9 };
    let Ok(text) = std::fs::read_to_string(format!("/proc/net/{table}")) else { return HashSet::new() };
    text.lines().skip(1).filter_map(|l| l.split_whitespace().nth(column)?.parse().ok()).collect()
}

fn exchange(stream: &mut UnixStream, line: &[u8]) -> Reply {
    let mut bytes = line.to_vec();
    bytes.push(b'\n');
    stream.write_all(&bytes).unwrap();
    let mut reply = String::new();
    BufReader::new(stream.try_clone().unwrap()).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
}

/// 10,000 requests pipelined on `connections` connections, as fast as they go: status requests,
/// malformed lines and λ changes (queued until the next step boundary). Returns the replies
/// (ok, busy, malformed) and the seconds it took.
fn flood(sock: &Path, connections: usize) -> ((usize, usize, usize), f64) {
    const TOTAL: usize = 10_000;
    let start = Instant::now();
    let handles: Vec<_> = (0..connections)
        .map(|c| {
            let stream = UnixStream::connect(sock).unwrap();
            std::thread::spawn(move || {
                let n = TOTAL / connections;
                let mut writer = stream.try_clone().unwrap();
                let sender = std::thread::spawn(move || {
                    let mut all = Vec::new();
                    for i in 0..n {
                        let line: &[u8] = match (c + i) % 10 {
                            0 => b"{\"cmd\":\"set_lambda\",\"term\":\"pref\",\"value\":0.5}",
                            1 => b"{\"cmd\":\"launch\"} \x00\xff",
                            _ => b"{\"cmd\":\"status\"}",
                        };
                        all.extend_from_slice(line);
                        all.push(b'\n');
                    }
                    writer.write_all(&all).unwrap();
                });
                let mut counts = (0, 0, 0);
                let mut reader = BufReader::new(stream);
                for _ in 0..n {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let reply: Reply = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
                    match reply.error.as_deref() {
                        None => counts.0 += 1,
                        Some(e) if e.starts_with("busy") => counts.1 += 1,
                        Some(e) if e.starts_with("malformed") => counts.2 += 1,
                        Some(e) => panic!("unexpected refusal: {e}"),
                    }
                }
                sender.join().unwrap();
                counts
            })
        })
        .collect();
    let mut total = (0, 0, 0);
    for h in handles {
        let (a, b, c) = h.join().unwrap();
        total = (total.0 + a, total.1 + b, total.2 + c);
    }
    (total, start.elapsed().as_secs_f64())
}

#[test]
fn hostile_clients_neither_stall_nor_grow_the_worker_and_nothing_listens_on_tcp() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let p = dpo_pipeline(tmp.path(), DpoRun { name: "hostile", ..DpoRun::default() });
    let child = spawn(&["run", p.to_str().unwrap(), "--headless", "--runs-dir", runs.to_str().unwrap()]);
    let pid = child.id();
    let run = live::only_run(&runs, WAIT);
    let mut owner = live::connect(&run, WAIT);
    let sock = socket_path(&run).unwrap();
    let step = trains_on(&run, 0, 1, "the first step");

    // Nothing listens on TCP or UDP: none of the worker's sockets is in an inet table, while its
    // control socket is in the unix table (so the inode matching does see its sockets).
    let mine = socket_inodes(pid);
    assert!(!mine.is_empty(), "the worker holds its control socket");
    assert!(!mine.is_disjoint(&table_inodes("unix")), "the worker's sockets are found in /proc/net/unix");
    for table in ["tcp", "tcp6", "udp", "udp6", "raw", "raw6"] {
        let inet = table_inodes(table);
        assert!(mine.is_disjoint(&inet), "the worker has a socket in /proc/net/{table}");
    }

    // Clients that connect and never send hold a connection each, and block nobody.
    let silent: Vec<UnixStream> = (0..MAX_CONNECTIONS / 4).map(|_| UnixStream::connect(&sock).unwrap()).collect();
    assert!(owner.send(&Request::Status).unwrap().ok, "the owner is served beside silent clients");
    trains_on(&run, step, 2, "steps while silent clients are connected");

    // A request sent one byte at a time is still one request.
    let mut slow = UnixStream::connect(&sock).unwrap();
    for b in b"{\"cmd\":\"status\"}\n" {
        slow.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut reply = String::new();
    BufReader::new(slow.try_clone().unwrap()).read_line(&mut reply).unwrap();
    assert!(reply.contains("\"ok\":true"), "{reply}");
    drop(slow);

    // Malformed frames get a reason each, and the connection survives them.
    let mut frames = UnixStream::connect(&sock).unwrap();
    let garbage: [&[u8]; 6] = [
        b"\x00\x00\x00\x00",
        b"\xff\xfe\xfd",
        b"{\"cmd\":",
        b"[1,2,3]",
        b"{\"cmd\":\"set_lambda\",\"term\":\"pref\"}",
        &[b'{'; 4096],
    ];
    for frame in garbage {
        let reply = exchange(&mut frames, frame);
        assert!(!reply.ok && !reply.error.unwrap_or_default().is_empty(), "{:?}", String::from_utf8_lossy(frame));
    }
    assert!(exchange(&mut frames, b"{\"cmd\":\"status\"}").ok);
    drop(frames);

    // An oversized frame (10 MiB without a newline) is cut at the limit: an error, then the
    // connection is closed without the worker reading (or keeping) the rest.
    let rss_before = rss_kib(pid);
    let mut big = UnixStream::connect(&sock).unwrap();
    let writer = {
        let mut big = big.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0usize;
            while sent < 10 << 20 {
                if big.write_all(&chunk).is_err() {
                    break; // closed by the worker
                }
                sent += chunk.len();
            }
            sent
        })
    };
    let mut reply = String::new();
    BufReader::new(big.try_clone().unwrap()).read_line(&mut reply).unwrap();
    assert!(reply.contains(&format!("longer than {MAX_REQUEST_BYTES} bytes")), "{reply}");
    let sent = writer.join().unwrap();
    assert!(sent < 10 << 20, "the worker closed the connection instead of reading 10 MiB ({sent} bytes sent)");
    let mut rest = Vec::new();
    let _ = big.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing after the refusal");

    // The flood: 10,000 requests on 4 connections. Status is answered at once; queued requests
    // are capped (the rest are told the worker is busy), so memory stays flat and the worker
    // goes on training.
    let (counts, seconds) = flood(&sock, 4);
    let rss_after_one = rss_kib(pid);
    let (counts2, seconds2) = flood(&sock, 4);
    let rss_after_two = rss_kib(pid);
    assert_eq!(counts.0 + counts.1 + counts.2, 10_000);
    assert_eq!(counts.2, 1_000, "every malformed line is refused as malformed");
    assert!(counts.0 >= 8_000, "every status request is answered: {counts:?}");
    let status = owner.send(&Request::Status).unwrap().status.unwrap();
    assert!(status.pending <= MAX_PENDING, "{status:?}");
    // The backlog is applied at the next boundary, and training goes on after it.
    live::wait_for("the queued requests to be applied", WAIT, || {
        (owner.send(&Request::Status).unwrap().status.unwrap().pending == 0).then_some(())
    });
    let step = trains_on(&run, max_step(&run), 2, "steps after the flood");
    let grown_kib = rss_after_two.saturating_sub(rss_before);
    assert!(grown_kib < 64 * 1024, "memory grew by {grown_kib} KiB through two floods");
    assert!(
        rss_after_two.saturating_sub(rss_after_one) < 16 * 1024,
        "the second flood grew memory again: {rss_after_one} -> {rss_after_two} KiB"
    );
    drop(silent);
    let stop = owner.send(&Request::Stop).unwrap();
    assert!(stop.ok, "{stop:?}");
    let (code, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    torture::figures(
        "socket",
        &[
            ("flood_requests", "20000".into()),
            ("flood_seconds", format!("{seconds:.2}+{seconds2:.2}")),
            ("answered", (counts.0 + counts2.0).to_string()),
            ("busy", (counts.1 + counts2.1).to_string()),
            ("malformed", (counts.2 + counts2.2).to_string()),
            ("rss_kib", format!("{rss_before}->{rss_after_one}->{rss_after_two}")),
            ("last_step", step.to_string()),
        ],
    );
}

#[test]
fn a_symlinked_socket_is_never_followed_and_an_open_run_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let p = dpo_pipeline(tmp.path(), DpoRun { name: "symlink", ..DpoRun::default() });
    let child = spawn(&["run", p.to_str().unwrap(), "--headless", "--runs-dir", runs.to_str().unwrap()]);
    let run = live::only_run(&runs, WAIT);
    let _ = live::connect(&run, WAIT);
    trains_on(&run, 0, 1, "the first step");

    // A neighbour's socket, and the run's socket replaced by a symlink to it.
    let evil_path = tmp.path().join("evil.sock");
    let evil = UnixListener::bind(&evil_path).unwrap();
    evil.set_nonblocking(true).unwrap();
    let sock = run.control_socket_path();
    let link = run.path().join("control.sock.new");
    std::os::unix::fs::symlink(&evil_path, &link).unwrap();
    std::fs::rename(&link, &sock).unwrap();
    let refused = Client::connect(run.path()).unwrap_err().to_string();
    assert!(refused.contains("is a symlink; refusing to connect"), "{refused}");
    assert!(evil.accept().is_err(), "the client never connected to the neighbour's socket");

    // SIGTERM stops the worker (checkpoint, exit 0); it removes the link, never its target.
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let (code, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert!(evil_path.exists(), "the neighbour's socket is left alone");

    // A run directory others can write is refused at start, with the reason.
    std::fs::set_permissions(run.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, err) = finish(spawn(&["resume", run.path().to_str().unwrap(), "--headless"]));
    assert_ne!(code, 0);
    assert!(err.contains("writable by others (mode 0777)") && err.contains("chmod o-w"), "{err}");
    std::fs::set_permissions(run.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // The worker left the symlink where its socket was (not ours to remove); a new worker
    // neither follows nor replaces it.
    assert!(std::fs::symlink_metadata(&sock).unwrap().file_type().is_symlink());
    let (code, err) = finish(spawn(&["resume", run.path().to_str().unwrap(), "--headless"]));
    assert_ne!(code, 0);
    assert!(err.contains("is a symlink; refusing to replace or follow it"), "{err}");
    assert!(std::fs::symlink_metadata(&sock).unwrap().file_type().is_symlink(), "the link is left as it was");
    assert!(evil.accept().is_err(), "nobody connected to the neighbour's socket");
    assert!(hone::run::WorkerLock::is_live(&run).unwrap().is_none(), "the refused workers released the lock");
}
