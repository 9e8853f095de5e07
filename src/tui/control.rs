//! Control of the live worker: the requests the TUI can make ([`ControlRequest`]), the [`Control`]
//! trait a transport implements, the "no live worker" stand-in, a recording fake for tests, and
//! the `control` thread that sends requests so the UI never waits on a reply.
//!
//! The real transport is the worker's Unix socket ([`Socket`], over `crate::run::control`'s
//! client); it connects per request, so a worker that restarts (a resume) is found again.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use crate::run::control::{Client, LambdaTerm, Request};

/// A request to the live worker.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlRequest {
    /// Pause at the next step boundary.
    Pause,
    /// Resume a paused worker.
    Resume,
    /// Checkpoint, then stop the run (it can be resumed later).
    Stop,
    /// End the running stage and go on with the next one.
    SkipStage,
    /// Set a loss weight from the next step on.
    SetLambda {
        /// Which λ: `pref` or `safe`.
        term: String,
        /// The new value (finite, not negative).
        value: f64,
    },
    /// Write a checkpoint now.
    CheckpointNow,
    /// Generate `count` candidate pairs for labeling.
    GenerateCandidates {
        /// How many pairs.
        count: u32,
    },
}

impl ControlRequest {
    /// The request's wire name.
    pub fn name(&self) -> &'static str {
        match self {
            ControlRequest::Pause => "pause",
            ControlRequest::Resume => "resume",
            ControlRequest::Stop => "stop",
            ControlRequest::SkipStage => "skip_stage",
            ControlRequest::SetLambda { .. } => "set_lambda",
            ControlRequest::CheckpointNow => "checkpoint_now",
            ControlRequest::GenerateCandidates { .. } => "generate_candidates",
        }
    }

    /// The worker's request for this one (the socket's wire format); an unknown λ is refused.
    pub fn to_wire(&self) -> Result<Request, String> {
        Ok(match self {
            ControlRequest::Pause => Request::Pause,
            ControlRequest::Resume => Request::Resume,
            ControlRequest::Stop => Request::Stop,
            ControlRequest::SkipStage => Request::SkipStage { stage: None },
            ControlRequest::SetLambda { term, value } => {
                let term = match term.as_str() {
                    "pref" => LambdaTerm::Pref,
                    "safe" => LambdaTerm::Safe,
                    other => return Err(format!("set_lambda: no λ named {other:?} (pref or safe)")),
                };
                Request::SetLambda { term, value: *value }
            }
            ControlRequest::CheckpointNow => Request::CheckpointNow,
            ControlRequest::GenerateCandidates { count } => {
                Request::GenerateCandidates { count: usize::try_from(*count).unwrap_or(usize::MAX) }
            }
        })
    }

    /// A short description for the status line and the confirmation dialog.
    pub fn describe(&self) -> String {
        match self {
            ControlRequest::Pause => "pause training".to_string(),
            ControlRequest::Resume => "resume training".to_string(),
            ControlRequest::Stop => "stop the run (checkpoint first; it can be resumed)".to_string(),
            ControlRequest::SkipStage => "skip the rest of the running stage".to_string(),
            ControlRequest::SetLambda { term, value } => format!("set λ_{term} to {value}"),
            ControlRequest::CheckpointNow => "write a checkpoint now".to_string(),
            ControlRequest::GenerateCandidates { count } => format!("generate {count} candidate pairs"),
        }
    }
}

/// Sends requests to a worker. `send` may block (a socket round trip); it is only ever called on
/// the `control` thread. `Ok` carries the worker's reply, `Err` says why it failed.
pub trait Control: Send {
    /// Sends one request and waits for its reply.
    fn send(&mut self, request: ControlRequest) -> Result<String, String>;
}

/// The stand-in when no worker is reachable: every request fails, saying so.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoWorker;

impl Control for NoWorker {
    fn send(&mut self, request: ControlRequest) -> Result<String, String> {
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
    fn send(&mut self, request: ControlRequest) -> Result<String, String> {
        let wire = request.to_wire()?;
        let mut client = Client::connect(&self.run).map_err(|e| e.to_string())?;
        let reply = client.send(&wire).map_err(|e| e.to_string())?;
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
    pub received: Arc<Mutex<Vec<ControlRequest>>>,
    /// When set, every request fails with this message.
    pub fail_with: Option<String>,
}

impl Control for Recording {
    fn send(&mut self, request: ControlRequest) -> Result<String, String> {
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
    tx: mpsc::Sender<ControlRequest>,
}

impl ControlHandle {
    /// Starts the `control` thread over `control`; `reply` is called on that thread with each
    /// request and its outcome, in order, until it returns false.
    pub fn spawn<F>(mut control: Box<dyn Control>, mut reply: F) -> std::io::Result<ControlHandle>
    where
        F: FnMut(ControlRequest, Result<String, String>) -> bool + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<ControlRequest>();
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
    pub fn send(&self, request: ControlRequest) -> bool {
        self.tx.send(request).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_map_to_the_worker_protocol_with_their_arguments() {
        let wire = |r: ControlRequest| serde_json::to_value(r.to_wire().unwrap()).unwrap();
        let set = ControlRequest::SetLambda { term: "safe".into(), value: 0.25 };
        assert_eq!(wire(set), json!({"cmd": "set_lambda", "term": "safe", "value": 0.25}));
        assert_eq!(
            wire(ControlRequest::GenerateCandidates { count: 8 }),
            json!({"cmd": "generate_candidates", "count": 8})
        );
        assert_eq!(wire(ControlRequest::SkipStage), json!({"cmd": "skip_stage"}));
        let unknown = ControlRequest::SetLambda { term: "sft".into(), value: 1.0 };
        assert!(unknown.to_wire().unwrap_err().contains("no λ named"));
    }

    #[test]
    fn the_thread_sends_in_order_and_reports_each_reply() {
        let fake = Recording::default();
        let received = Arc::clone(&fake.received);
        let (tx, rx) = mpsc::channel();
        let handle = ControlHandle::spawn(Box::new(fake), move |req, out| tx.send((req, out)).is_ok()).expect("spawn");
        assert!(handle.send(ControlRequest::Pause));
        assert!(handle.send(ControlRequest::CheckpointNow));
        let replies: Vec<_> = (0..2).map(|_| rx.recv().expect("a reply")).collect();
        assert_eq!(replies[0], (ControlRequest::Pause, Ok("ok: pause".to_string())));
        assert_eq!(replies[1].1, Ok("ok: checkpoint_now".to_string()));
        assert_eq!(*received.lock().expect("lock"), vec![ControlRequest::Pause, ControlRequest::CheckpointNow]);
    }

    #[test]
    fn without_a_worker_every_request_fails_plainly() {
        let err = NoWorker.send(ControlRequest::Stop).expect_err("no worker");
        assert!(err.contains("no live worker"), "{err}");
    }
}
