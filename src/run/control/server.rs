//! The worker's side of the control socket: an accept thread, one thread per connection (at most
//! [`MAX_CONNECTIONS`]), and an [`Inbox`] the trainer drains at every step boundary.

use std::collections::VecDeque;
use std::fs::{self, DirBuilder};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::peer::{own_uid, peer_uid};
use super::{Reply, Request, Status, MAX_REQUEST_BYTES, MAX_SOCKET_PATH};
use crate::run::dir::RunDir;
use crate::run::error::RunError;
use crate::run::fsutil::{write_atomic, IoContext};
use crate::run::lock::WorkerLock;

/// Connections served at once; more are answered with an error and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// Requests queued and not yet applied; more are refused as busy, so that a flood of requests
/// neither grows the worker's memory nor stalls training while the backlog is applied.
pub const MAX_PENDING: usize = 64;

#[derive(Debug, Default)]
struct Queue {
    pending: VecDeque<Request>,
    status: Status,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    arrived: Condvar,
    closing: AtomicBool,
    connections: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The trainer's end: requests in arrival order, and the status that `status` requests see.
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    shared: Arc<Shared>,
}

impl Inbox {
    /// An inbox with no socket (tests feed it with [`Inbox::push`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a request as if it had arrived on the socket.
    pub fn push(&self, request: Request) {
        self.shared.lock().pending.push_back(request);
        self.shared.arrived.notify_all();
    }

    /// The oldest pending request; with `wait`, blocks (without spinning) up to that long for one.
    pub fn next(&self, wait: Option<Duration>) -> Option<Request> {
        let mut queue = self.shared.lock();
        if let Some(request) = queue.pending.pop_front() {
            return Some(request);
        }
        let wait = wait?;
        let (mut queue, _) = self
            .shared
            .arrived
            .wait_timeout_while(queue, wait, |q| q.pending.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
        queue.pending.pop_front()
    }

    /// Replaces the status answered to `status` requests (its `pending` is filled in on reply).
    pub fn publish(&self, status: Status) {
        self.shared.lock().status = status;
    }

    fn status(&self) -> Status {
        let queue = self.shared.lock();
        Status { pending: queue.pending.len(), ..queue.status.clone() }
    }
}

/// A listening control socket; dropping it stops accepting and removes the socket (and the
/// private directory and `control.path` when it used them).
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    /// The bound socket's inode, to recognise it on exit.
    inode: u64,
    private_dir: Option<PathBuf>,
    pointer: Option<PathBuf>,
    inbox: Inbox,
    accept: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Binds the run's control socket (the caller is its live worker) and starts serving it.
    pub fn start(lock: &WorkerLock) -> Result<ControlServer, RunError> {
        let run = lock.run();
        refuse_unsafe_dir(run)?;
        remove_stale(run);
        let local = run.control_socket_path();
        let (path, private_dir, pointer) = if local.as_os_str().len() < MAX_SOCKET_PATH {
            (local, None, None)
        } else {
            let dir = private_dir(run)?;
            let path = dir.join("control.sock");
            (path, Some(dir), Some(run.control_path_file()))
        };
        let listener = bind_private(&path)?;
        let inode = fs::symlink_metadata(&path).ctx("stat", &path)?.ino();
        if let Some(pointer) = &pointer {
            let mut text = path.as_os_str().as_encoded_bytes().to_vec();
            text.push(b'\n');
            write_atomic(pointer, &text)?;
        }
        let inbox = Inbox::new();
        inbox.publish(Status { pid: lock.pid(), state: "starting".into(), ..Status::default() });
        let shared = Arc::clone(&inbox.shared);
        let accept = thread::Builder::new()
            .name("hone-control".into())
            .spawn(move || accept_loop(&listener, &shared))
            .ctx("start a thread for", &path)?;
        Ok(ControlServer { path, inode, private_dir, pointer, inbox, accept: Some(accept) })
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The trainer's end.
    pub fn inbox(&self) -> Inbox {
        self.inbox.clone()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.inbox.shared.closing.store(true, Ordering::SeqCst);
        // Only our own socket is connected to and removed: if someone replaced the path (with a
        // symlink to their socket, say), connecting would reach them and joining would wait
        // forever for a wake-up that never comes; the accept thread then ends with the process.
        let ours = fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_socket() && m.ino() == self.inode);
        if !ours {
            return;
        }
        // Wake the accept thread with a connection of our own; it sees `closing` and returns.
        if UnixStream::connect(&self.path).is_ok() {
            if let Some(accept) = self.accept.take() {
                let _ = accept.join();
            }
        }
        let _ = fs::remove_file(&self.path);
        if let Some(pointer) = &self.pointer {
            let _ = fs::remove_file(pointer);
        }
        if let Some(dir) = &self.private_dir {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Refuses to serve a run directory that others can write (they could replace the socket, or the
/// `control.path` pointer, between the worker binding it and a client connecting), or one that
/// holds something other than a socket under the socket's name (a symlink is never followed).
fn refuse_unsafe_dir(run: &RunDir) -> Result<(), RunError> {
    let refuse = |message: String| RunError::Control { run: run.path().to_path_buf(), message };
    let meta = fs::metadata(run.path()).ctx("stat", run.path())?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(refuse(format!(
            "the run directory is writable by others (mode {mode:04o}), so anyone could replace its control \
             socket; refusing to serve it (run `chmod o-w {}`)",
            run.path().display()
        )));
    }
    if meta.uid() != own_uid() {
        return Err(refuse(format!(
            "the run directory belongs to uid {}, not to this worker's uid {}; refusing to serve it",
            meta.uid(),
            own_uid()
        )));
    }
    let local = run.control_socket_path();
    if let Ok(m) = fs::symlink_metadata(&local) {
        if !m.file_type().is_socket() {
            let what = if m.file_type().is_symlink() { "a symlink" } else { "not a socket" };
            return Err(refuse(format!(
                "{} is {what}; refusing to replace or follow it (remove it if you put it there)",
                local.display()
            )));
        }
    }
    Ok(())
}

/// Removes what a crashed worker left: its socket file and, if it used one, the private directory
/// recorded in `control.path` (only a `hone-<uid>-*` directory of this user's: the pointer is a
/// file, and a worker must not delete whatever socket a changed pointer names).
fn remove_stale(run: &RunDir) {
    let local = run.control_socket_path();
    if fs::symlink_metadata(&local).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = fs::remove_file(&local);
    }
    let pointer = run.control_path_file();
    if let Ok(text) = fs::read_to_string(&pointer) {
        let old = PathBuf::from(text.trim_end_matches('\n'));
        let ours = old
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n.to_string_lossy().starts_with(&format!("hone-{}-", own_uid())));
        if ours && fs::symlink_metadata(&old).is_ok_and(|m| m.file_type().is_socket() && m.uid() == own_uid()) {
            let _ = fs::remove_file(&old);
            if let Some(parent) = old.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
        let _ = fs::remove_file(&pointer);
    }
}

/// A fresh 0700 directory for the socket under `$XDG_RUNTIME_DIR` (or the temp dir).
fn private_dir(run: &RunDir) -> Result<PathBuf, RunError> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let dir = base.join(format!("hone-{}-{}-{nanos:08x}", own_uid(), std::process::id()));
    // `create` (not `create_all`) fails if the name exists: nobody can have prepared it for us.
    DirBuilder::new().mode(0o700).create(&dir).ctx("create", &dir)?;
    if dir.join("control.sock").as_os_str().len() >= MAX_SOCKET_PATH {
        let _ = fs::remove_dir(&dir);
        return Err(RunError::Control {
            run: run.path().to_path_buf(),
            message: format!("no short enough place for the control socket (tried {})", dir.display()),
        });
    }
    Ok(dir)
}

/// Binds `path` so that the socket is never reachable with a mode wider than 0600.
fn bind_private(path: &Path) -> Result<UnixListener, RunError> {
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = bound.ctx("bind", path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).ctx("chmod", path)?;
    Ok(listener)
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut stream) = stream else { continue };
        if shared.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            let _ =
                write_reply(&mut stream, &Reply::error(format!("too many connections (at most {MAX_CONNECTIONS})")));
            continue;
        }
        let conn_shared = Arc::clone(shared);
        let spawned = thread::Builder::new().name("hone-control-conn".into()).spawn(move || {
            let _ = serve(stream, &conn_shared);
            conn_shared.connections.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            // The closure never ran (its stream is dropped, closing the connection).
            shared.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn write_reply(stream: &mut UnixStream, reply: &Reply) -> io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// How long a refused peer's first request is waited for before the refusal is written.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// Serves one connection: the peer check, then request lines until EOF.
fn serve(mut stream: UnixStream, shared: &Arc<Shared>) -> io::Result<()> {
    let me = own_uid();
    let refusal = match peer_uid(&stream) {
        Ok(uid) if uid == me => None,
        Ok(uid) => Some(format!("permission denied: peer uid {uid}")),
        Err(e) => Some(format!("cannot check the peer: {e}")),
    };
    if let Some(message) = refusal {
        // Take the first request line (unread, briefly) before refusing: closing with it still
        // unread would reset the connection, and the client would see a broken pipe instead of
        // the reason.
        stream.set_read_timeout(Some(REFUSAL_READ_TIMEOUT))?;
        let mut discard = Vec::new();
        let _ = BufReader::new((&stream).take(MAX_REQUEST_BYTES as u64 + 1)).read_until(b'\n', &mut discard);
        return write_reply(&mut stream, &Reply::error(message));
    }
    let inbox = Inbox { shared: Arc::clone(shared) };
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_REQUEST_BYTES as u64 + 1).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        let complete = line.last() == Some(&b'\n');
        if complete {
            line.pop();
        }
        if line.len() > MAX_REQUEST_BYTES {
            return write_reply(
                &mut stream,
                &Reply::error(format!("request longer than {MAX_REQUEST_BYTES} bytes; closing the connection")),
            );
        }
        let reply = handle(&line, &inbox);
        write_reply(&mut stream, &reply)?;
        if !complete {
            return Ok(());
        }
    }
}

fn handle(line: &[u8], inbox: &Inbox) -> Reply {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return Reply::error(format!("malformed request: {e}")),
    };
    if let Err(message) = request.validate() {
        return Reply::error(message);
    }
    if request == Request::Status {
        return Reply { ok: true, error: None, status: Some(inbox.status()) };
    }
    let mut queue = inbox.shared.lock();
    if queue.pending.len() >= MAX_PENDING {
        return Reply::error(format!(
            "busy: {MAX_PENDING} requests are waiting for the next step boundary; try again after it"
        ));
    }
    queue.pending.push_back(request);
    drop(queue);
    inbox.shared.arrived.notify_all();
    Reply::ok()
}
