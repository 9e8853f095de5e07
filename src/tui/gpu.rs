//! The GPU panel's data: one [`GpuReading`] per device, read through NVML (`nvml-wrapper` loads
//! libnvidia-ml at run time) on the `gpu` thread about once a second, or [`GpuStatus::None`] when
//! there is no NVIDIA driver. Formatting is a pure function of the readings, so it is tested with
//! fake ones; the UI thread never calls NVML.

use std::thread;
use std::time::Duration;

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::Nvml;

/// How often the `gpu` thread reads the devices.
pub const GPU_POLL: Duration = Duration::from_secs(1);

/// One device at one moment. Any field NVML could not read is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReading {
    /// The device's name (from the driver; sanitize before display).
    pub name: String,
    /// GPU utilisation over the last sample period, in percent.
    pub utilisation: Option<u32>,
    /// Memory in use, in bytes.
    pub memory_used: Option<u64>,
    /// Memory installed, in bytes.
    pub memory_total: Option<u64>,
    /// Core temperature in °C.
    pub temperature: Option<u32>,
    /// Power draw in milliwatts.
    pub power_mw: Option<u32>,
}

/// What the GPU panel knows.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum GpuStatus {
    /// Not read yet.
    #[default]
    Unknown,
    /// No NVIDIA GPU (or no driver); the reason, for the panel.
    None(String),
    /// The newest readings, one per device.
    Readings(Vec<GpuReading>),
}

/// One line per device: `0 H100 97% 64°C 412 W 61.2/80GiB`, missing values as `—`.
pub fn gpu_lines(status: &GpuStatus) -> Vec<String> {
    match status {
        GpuStatus::Unknown => vec!["reading…".to_string()],
        GpuStatus::None(_) => vec!["no GPU".to_string()],
        GpuStatus::Readings(readings) if readings.is_empty() => vec!["no GPU".to_string()],
        GpuStatus::Readings(readings) => readings
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let dash = || "—".to_string();
                let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
                let util = r.utilisation.map_or_else(dash, |u| format!("{u}%"));
                let memory = match (r.memory_used, r.memory_total) {
                    (Some(u), Some(t)) => format!("{:.1}/{:.0}GiB", gib(u), gib(t)),
                    (Some(u), None) => format!("{:.1}GiB", gib(u)),
                    _ => dash(),
                };
                let temp = r.temperature.map_or_else(dash, |t| format!("{t}°C"));
                let power = r.power_mw.map_or_else(dash, |p| format!("{:.0} W", f64::from(p) / 1000.0));
                format!("{i} {} {util} {temp} {power} {memory}", short_name(&r.name))
            })
            .collect(),
    }
}

/// `NVIDIA H100 80GB HBM3` → `H100`: the first word with a digit after the vendor.
fn short_name(name: &str) -> String {
    let mut words = name.split_whitespace().filter(|w| !w.eq_ignore_ascii_case("nvidia"));
    let first = words.clone().next().unwrap_or("GPU");
    words.find(|w| w.chars().any(|c| c.is_ascii_digit())).unwrap_or(first).to_string()
}

/// Reads every device once.
fn read_all(nvml: &Nvml) -> Vec<GpuReading> {
    let count = nvml.device_count().unwrap_or(0);
    (0..count)
        .filter_map(|i| nvml.device_by_index(i).ok())
        .map(|d| {
            let memory = d.memory_info().ok();
            GpuReading {
                name: d.name().unwrap_or_else(|_| "GPU".to_string()),
                utilisation: d.utilization_rates().ok().map(|u| u.gpu),
                memory_used: memory.as_ref().map(|m| m.used),
                memory_total: memory.as_ref().map(|m| m.total),
                temperature: d.temperature(TemperatureSensor::Gpu).ok(),
                power_mw: d.power_usage().ok(),
            }
        })
        .collect()
}

/// Starts the `gpu` thread: it sends one status now and, when NVML loaded, one a second until
/// `send` returns false (the UI went away).
pub fn spawn<F>(mut send: F) -> std::io::Result<()>
where
    F: FnMut(GpuStatus) -> bool + Send + 'static,
{
    thread::Builder::new().name("gpu".to_string()).spawn(move || {
        let nvml = match Nvml::init() {
            Ok(nvml) => nvml,
            Err(e) => {
                send(GpuStatus::None(e.to_string()));
                return;
            }
        };
        while send(GpuStatus::Readings(read_all(&nvml))) {
            thread::sleep(GPU_POLL);
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_format_in_one_line_each() {
        let h100 = GpuReading {
            name: "NVIDIA H100 80GB HBM3".to_string(),
            utilisation: Some(97),
            memory_used: Some(61 * (1 << 30) + (1 << 29)),
            memory_total: Some(80 * (1 << 30)),
            temperature: Some(64),
            power_mw: Some(412_345),
        };
        let partial = GpuReading {
            name: "Tesla T4".into(),
            utilisation: None,
            memory_used: None,
            memory_total: None,
            temperature: Some(40),
            power_mw: None,
        };
        let lines = gpu_lines(&GpuStatus::Readings(vec![h100, partial]));
        assert_eq!(lines, vec!["0 H100 97% 64°C 412 W 61.5/80GiB", "1 T4 — 40°C — —"]);
    }

    #[test]
    fn without_a_driver_it_says_no_gpu() {
        assert_eq!(gpu_lines(&GpuStatus::None("libnvidia-ml.so: not found".into())), vec!["no GPU"]);
        assert_eq!(gpu_lines(&GpuStatus::Readings(Vec::new())), vec!["no GPU"]);
    }

    #[test]
    fn this_machine_reports_a_status_without_panicking() {
        let (tx, rx) = std::sync::mpsc::channel();
        spawn(move |status| {
            let _ = tx.send(status);
            false
        })
        .expect("spawn");
        let status = rx.recv_timeout(Duration::from_secs(10)).expect("a first status");
        assert!(!matches!(status, GpuStatus::Unknown));
    }
}
