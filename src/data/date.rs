//! The clock behind the `strftime_now` template global that transformers provides: either
//! the current UTC time or a fixed date (for reproducible renders), formatted with the subset
//! of Python's `strftime` directives that Python and jiff agree on.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use minijinja::{Error, ErrorKind};

/// Where `strftime_now` gets "now" from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The current UTC time of the machine (what transformers does, in local time).
    SystemUtc,
    /// A fixed date at 00:00:00.
    Fixed {
        /// The date.
        date: Date,
    },
}

/// The directives `strftime` accepts: the ones Python's and jiff's formatters write alike.
const DIRECTIVES: &str = "YymdejbhBaAHIMSpFT%";

impl Clock {
    /// A fixed date; `None` when the date does not exist.
    pub fn fixed(year: i64, month: u32, day: u32) -> Option<Self> {
        let date = Date::new(year.try_into().ok()?, month.try_into().ok()?, day.try_into().ok()?).ok()?;
        Some(Clock::Fixed { date })
    }

    fn now(self) -> DateTime {
        match self {
            Clock::Fixed { date } => date.to_datetime(Time::midnight()),
            Clock::SystemUtc => TimeZone::UTC.to_datetime(Timestamp::now()),
        }
    }

    /// Formats "now" with Python `strftime` directives: `%Y %y %m %d %e %j %b %B %h %a %A
    /// %H %I %M %S %p %F %T %%`. Other directives are an error.
    pub fn strftime(&self, fmt: &str) -> Result<String, Error> {
        let mut chars = fmt.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                continue;
            }
            match chars.next() {
                Some(d) if DIRECTIVES.contains(d) => {}
                // A lone '%' at the end stays as it is, as in Python.
                None => return Ok(format!("{}%", self.format(&fmt[..fmt.len() - 1])?)),
                Some(other) => return Err(unsupported(&format!("unsupported directive %{other}"))),
            }
        }
        self.format(fmt)
    }

    fn format(self, fmt: &str) -> Result<String, Error> {
        jiff::fmt::strtime::format(fmt, self.now()).map_err(|e| unsupported(&e.to_string()))
    }
}

fn unsupported(message: &str) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("strftime_now: {message}"))
}

/// Formats Unix seconds as `YYYYMMDD-HHMMSS` in UTC (times past jiff's range as its last second).
pub fn utc_stamp(secs: u64) -> String {
    let t = i64::try_from(secs).ok().and_then(|s| Timestamp::from_second(s).ok()).unwrap_or(Timestamp::MAX);
    TimeZone::UTC.to_datetime(t).strftime("%Y%m%d-%H%M%S").to_string()
}
