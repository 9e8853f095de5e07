//! `Shutdown`: how the worker reacts to SIGINT, SIGTERM and SIGHUP (via signal-hook; no `unsafe`
//! in hone).
//!
//! Exactly what happens once [`Shutdown::install`] has run:
//! - First SIGINT or SIGTERM: a shared flag is set and nothing else; [`Shutdown::requested`]
//!   turns true. The worker is expected to poll it between steps, write a final checkpoint/event
//!   and return normally (so destructors run and the worker lock and worker.pid are cleaned up).
//! - Any further SIGINT or SIGTERM (the flag is already set): the process exits at once via
//!   `_exit` with status 130 (SIGINT) or 143 (SIGTERM). No destructors or atexit hooks run; the
//!   kernel releases the worker lock, worker.pid stays behind (stale, harmless: liveness is the
//!   lock), an events.jsonl line or checkpoint in progress may be torn/left in `.tmp-*` and is
//!   dealt with as after any crash. Calling [`Shutdown::request`] also arms this.
//! - SIGHUP: ignored (a handler that sets an unread flag replaces the default action, which would
//!   terminate), so a worker survives the terminal that started it closing.
//! - SIGKILL cannot be caught; it is the same as a crash.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::flag;

use super::error::RunError;

static INSTALLED: Mutex<Option<Shutdown>> = Mutex::new(None);

/// Graceful-shutdown flag set by SIGINT/SIGTERM (see the module docs for the full behavior).
#[derive(Debug, Clone)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
}

impl Shutdown {
    /// Installs the handlers once per process; later calls return the same `Shutdown`.
    pub fn install() -> Result<Shutdown, RunError> {
        let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shutdown) = installed.as_ref() {
            return Ok(shutdown.clone());
        }
        let shutdown = Shutdown { flag: Arc::new(AtomicBool::new(false)) };
        let err = |signal: i32| move |source| RunError::Signal { signal, source };
        for (signal, status) in [(SIGINT, 130), (SIGTERM, 143)] {
            // Order matters: the conditional exit must run before the flag is set, so the first
            // signal only sets the flag and the second one exits.
            flag::register_conditional_shutdown(signal, status, Arc::clone(&shutdown.flag)).map_err(err(signal))?;
            flag::register(signal, Arc::clone(&shutdown.flag)).map_err(err(signal))?;
        }
        flag::register(SIGHUP, Arc::new(AtomicBool::new(false))).map_err(err(SIGHUP))?;
        *installed = Some(shutdown.clone());
        Ok(shutdown)
    }

    /// Whether a graceful shutdown was requested (by a signal or [`Shutdown::request`]).
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Requests a graceful shutdown from inside the process, as a first SIGINT would.
    pub fn request(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }
}
