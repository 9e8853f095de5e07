//! Control of the live worker: the requests the TUI makes are the worker's own
//! ([`crate::control::Request`]); here are the [`Control`]
//! trait a transport implements, the "no live worker" stand-in, a recording fake for tests, and
//! the `control` thread that sends requests so the UI never waits on a reply.
//!
//! The real transport is the worker's Unix socket ([`Socket`], over `crate::run::control`'s
//! client); it connects per request, so a worker that restarts (a resume) is found again.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use crate::run::control::{Client, Request};

/// A short description of a request for the status line and the confirmation dialog.
pub fn describe(request: &Request) -> String {
    match request {
        Request::Pause => "pause training".to_string(),
        Request::Resume => "resume training".to_string(),
        Request::Stop => "stop the run (checkpoint first; it can be resumed)".to_string(),
        Request::SkipStage { .. } => "skip the rest of the running stage".to_string(),
        Request::SetLambda { term, value } => format!("set λ_{} to {value}", term.as_str()),
        Request::CheckpointNow => "write a checkpoint now".to_string(),
        Request::GenerateCandidates { count } => format!("generate {count} candidate pairs"),
        Request::Status => "ask where the worker stands".to_string(),
    }
}

/// Sends requests to a worker. `send` may block (a socket round trip); it is only ever called on
/// the `control` thread. `Ok` carries the worker's reply, `Err` says why it failed.
pub trait Control: Send {
    /// Sends one request and waits for its reply.
    fn send(&mut self, request: Request) -> Result<String, String>;
}

/// The stand-in when no worker is reachable: every request fails, saying so.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoWorker;

impl Control for NoWorker {
    fn send(&mut self, request: Request) -> Result<String, String> {
        Err(format!("{}: no live worker to send it to", request.name()))
    }
}

/// The live worker's control socket in a run directory.
#[derive(Debug, Clone)]
pub struct Socket {
    run: PathBuf,
}

impl Socket {
    /// Requests go to the worker of the run at `run`.
    pub fn new(run: PathBuf) -> Socket {
        Socket { run }
    }
}

impl Control for Socket {
    fn send(&mut self, request: Request) -> Result<String, String> {
        let mut client = Client::connect(&self.run).map_err(|e| e.to_string())?;
        let reply = client.send(&request).map_err(|e| e.to_string())?;
        if reply.ok {
            Ok(format!("{}: accepted, applied at the next step boundary", request.name()))
        } else {
            Err(format!("{}: {}", request.name(), reply.error.unwrap_or_else(|| "refused".to_string())))
        }
    }
}

/// A fake for tests: records every request and answers `ok: NAME` (or the error it was given).
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// The requests received, oldest first (shared, so a test keeps a handle after boxing it).
    pub received: Arc<Mutex<Vec<Request>>>,
    /// When set, every request fails with this message.
    pub fail_with: Option<String>,
}

impl Control for Recording {
    fn send(&mut self, request: Request) -> Result<String, String> {
        let name = request.name();
        self.received.lock().map_err(|_| "recording poisoned".to_string())?.push(request);
        match &self.fail_with {
            Some(message) => Err(message.clone()),
            None => Ok(format!("ok: {name}")),
        }
    }
}

/// The UI's end of the `control` thread: [`ControlHandle::send`] queues a request and returns at
/// once; each reply comes back through the callback given to [`ControlHandle::spawn`].
pub struct ControlHandle {
    tx: mpsc::Sender<Request>,
}

impl ControlHandle {
    /// Starts the `control` thread over `control`; `reply` is called on that thread with each
    /// request and its outcome, in order, until it returns false.
    pub fn spawn<F>(mut control: Box<dyn Control>, mut reply: F) -> std::io::Result<ControlHandle>
    where
        F: FnMut(Request, Result<String, String>) -> bool + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Request>();
        thread::Builder::new().name("control".to_string()).spawn(move || {
            for request in rx {
                let outcome = control.send(request.clone());
                if !reply(request, outcome) {
                    return;
                }
            }
        })?;
        Ok(ControlHandle { tx })
    }

    /// Queues `request`; false when the thread has stopped.
    pub fn send(&self, request: Request) -> bool {
        self.tx.send(request).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::LambdaTerm;
    use serde_json::json;

    #[test]
    fn the_dashboards_requests_are_the_worker_protocols_lines() {
        let wire = |r: Request| serde_json::to_value(r).unwrap();
        let set = Request::SetLambda { term: LambdaTerm::Safe, value: 0.25 };
        assert_eq!(wire(set), json!({"cmd": "set_lambda", "term": "safe", "value": 0.25}));
        assert_eq!(wire(Request::GenerateCandidates { count: 8 }), json!({"cmd": "generate_candidates", "count": 8}));
        assert_eq!(wire(Request::SkipStage { stage: None }), json!({"cmd": "skip_stage"}));
    }

    #[test]
    fn the_thread_sends_in_order_and_reports_each_reply() {
        let fake = Recording::default();
        let received = Arc::clone(&fake.received);
        let (tx, rx) = mpsc::channel();
        let handle = ControlHandle::spawn(Box::new(fake), move |req, out| tx.send((req, out)).is_ok()).expect("spawn");
        assert!(handle.send(Request::Pause));
        assert!(handle.send(Request::CheckpointNow));
        let replies: Vec<_> = (0..2).map(|_| rx.recv().expect("a reply")).collect();
        assert_eq!(replies[0], (Request::Pause, Ok("ok: pause".to_string())));
        assert_eq!(replies[1].1, Ok("ok: checkpoint_now".to_string()));
        assert_eq!(*received.lock().expect("lock"), vec![Request::Pause, Request::CheckpointNow]);
    }

    #[test]
    fn without_a_worker_every_request_fails_plainly() {
        let err = NoWorker.send(Request::Stop).expect_err("no worker");
        assert!(err.contains("no live worker"), "{err}");
    }
}
