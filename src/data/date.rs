//! The clock behind the `strftime_now` template global that transformers provides: either
//! the current UTC time or a fixed date (for reproducible renders), formatted with a subset
//! of Python's `strftime` directives.

use minijinja::{Error, ErrorKind};

/// Where `strftime_now` gets "now" from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The current UTC time of the machine (what transformers does, in local time).
    SystemUtc,
    /// A fixed date at 00:00:00; days are counted from 1970-01-01.
    Fixed {
        /// Days since the Unix epoch.
        days: i64,
    },
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The `(year, month, day)` of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Clock {
    /// A fixed date; `None` when the date does not exist.
    pub fn fixed(year: i64, month: u32, day: u32) -> Option<Self> {
        if !(1..=12).contains(&month) || day == 0 {
            return None;
        }
        let days = days_from_civil(year, month, day);
        (civil_from_days(days) == (year, month, day)).then_some(Clock::Fixed { days })
    }

    fn now(&self) -> (i64, u32) {
        match *self {
            Clock::Fixed { days } => (days, 0),
            Clock::SystemUtc => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u32)
            }
        }
    }

    /// Formats "now" with Python `strftime` directives: `%Y %y %m %d %e %j %b %B %h %a %A
    /// %H %I %M %S %p %F %T %%`. Other directives are an error.
    pub fn strftime(&self, fmt: &str) -> Result<String, Error> {
        let (days, secs) = self.now();
        let (year, month, day) = civil_from_days(days);
        let weekday = (days + 4).rem_euclid(7) as usize;
        let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
        let yday = days - days_from_civil(year, 1, 1) + 1;
        let month_name = MONTHS[(month - 1) as usize];
        let mut out = String::new();
        let mut chars = fmt.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let Some(d) = chars.next() else {
                out.push('%');
                break;
            };
            let piece = match d {
                'Y' => year.to_string(),
                'y' => format!("{:02}", year.rem_euclid(100)),
                'm' => format!("{month:02}"),
                'd' => format!("{day:02}"),
                'e' => format!("{day:>2}"),
                'j' => format!("{yday:03}"),
                'b' | 'h' => month_name[..3].to_string(),
                'B' => month_name.to_string(),
                'a' => WEEKDAYS[weekday][..3].to_string(),
                'A' => WEEKDAYS[weekday].to_string(),
                'H' => format!("{hour:02}"),
                'I' => format!("{:02}", (hour + 11) % 12 + 1),
                'M' => format!("{minute:02}"),
                'S' => format!("{second:02}"),
                'p' => (if hour < 12 { "AM" } else { "PM" }).to_string(),
                'F' => format!("{year}-{month:02}-{day:02}"),
                'T' => format!("{hour:02}:{minute:02}:{second:02}"),
                '%' => "%".to_string(),
                other => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        format!("strftime_now: unsupported directive %{other}"),
                    ))
                }
            };
            out.push_str(&piece);
        }
        Ok(out)
    }
}
