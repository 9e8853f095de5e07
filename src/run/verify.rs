//! The checkpoint a resume starts from is verified in full (every sha256) before training goes on.
//! A large model's checkpoint takes a while to hash, so stop, pause and SIGTERM/SIGINT take effect
//! between two blocks read, as they do between the batches of the trainer's long phases: a stop
//! ends the worker there (a `phase_interrupted` event with phase `verify` says how far it got, and
//! the next resume verifies again); a pause waits there until resume or stop. Other control
//! requests wait for the trainer's first step boundary.

use std::ops::ControlFlow;
use std::time::Duration;

use super::worker::RunHost;
use super::{kind, Checkpoint, Event, RunError};
use crate::control::{Request, Status};
use crate::train::host::Host;

/// How long a paused verification waits for a request before looking at the stop signal again.
const PAUSE_POLL: Duration = Duration::from_millis(200);

/// The phase's name in `phase_interrupted` and the state `status` requests see meanwhile.
const PHASE: &str = "verify";

/// Verifies `checkpoint` for a resume; `Break` when a stop came first (after its
/// `phase_interrupted` event). A damaged checkpoint is an error.
pub fn verify_for_resume(host: &mut RunHost, checkpoint: &Checkpoint) -> Result<ControlFlow<()>, RunError> {
    let mut gate = Gate { host, step: checkpoint.step, paused: false, held: Vec::new(), failed: None };
    gate.publish("verifying");
    let mut done_total = (0, 0);
    let flow = checkpoint.verify_with(&mut |done, total| {
        done_total = (done, total);
        gate.between()
    })?;
    if let Some(e) = gate.failed.take() {
        return Err(e);
    }
    for control in std::mem::take(&mut gate.held) {
        gate.host.hold_control(control);
    }
    if flow.is_break() {
        let (done, total) = done_total;
        gate.publish("stopping");
        gate.host.append(
            Event::new(kind::PHASE_INTERRUPTED, None, Some(gate.step))
                .with("phase", PHASE)
                .with("done", done)
                .with("total", total)
                .with("unit", "bytes"),
        )?;
    }
    Ok(flow)
}

/// What verification needs between two blocks: the host's requests and stop flag, the pause.
struct Gate<'h> {
    host: &'h mut RunHost,
    step: u64,
    paused: bool,
    /// Requests for the trainer, handed back once verification ends.
    held: Vec<Request>,
    /// An event that could not be written (the closure cannot return it).
    failed: Option<RunError>,
}

impl Gate<'_> {
    fn publish(&mut self, state: &'static str) {
        self.host.publish(&Status { state: state.to_string(), step: self.step, ..Status::default() });
    }

    fn log(&mut self, event: Event) {
        if let Err(e) = self.host.append(event) {
            self.failed.get_or_insert(e);
        }
    }

    fn unpause(&mut self) {
        self.paused = false;
        let event = Event::new(kind::RESUMED, None, Some(self.step))
            .with("from_step", self.step)
            .with("reason", "unpause")
            .with("pid", std::process::id());
        self.log(event);
    }

    /// Between two blocks: `Break` on a stop (a request or the signal); waits while paused.
    fn between(&mut self) -> ControlFlow<()> {
        if self.failed.is_some() {
            return ControlFlow::Break(());
        }
        loop {
            let wait = self.paused.then_some(PAUSE_POLL);
            let Some(control) = self.host.next_control(wait) else {
                if !self.paused || self.host.stop_requested() {
                    break;
                }
                continue;
            };
            match control {
                Request::Pause if !self.paused => {
                    self.paused = true;
                    self.log(Event::new(kind::PAUSED, None, Some(self.step)));
                    self.publish("paused");
                }
                Request::Resume if self.paused => {
                    self.unpause();
                    self.publish("verifying");
                }
                Request::Pause | Request::Resume => {}
                Request::Stop => {
                    self.log(Event::new(kind::STOP_REQUESTED, None, Some(self.step)).with("source", "control"));
                    return self.stop();
                }
                other => self.held.push(other),
            }
        }
        if self.host.stop_requested() {
            return self.stop();
        }
        ControlFlow::Continue(())
    }

    fn stop(&mut self) -> ControlFlow<()> {
        if self.paused {
            self.unpause();
        }
        ControlFlow::Break(())
    }
}
