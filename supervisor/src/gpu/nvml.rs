//! NVML through nvml-wrapper: the library is loaded at run time (`libnvidia-ml.so.1`, part of
//! the NVIDIA driver), once per process, and kept for the process's life. It gives the device
//! inventory, the health readings of the device workers compute on (NVML index 0: GPU workers
//! run with `CUDA_DEVICE_ORDER=PCI_BUS_ID`, so CUDA's ordinal 0 is NVML's index 0), per-process
//! used device memory for the VRAM watch, and the total-energy counter.
//!
//! Every NVML failure (library missing, driver not loaded, a query a device does not support,
//! a GPU fallen off the bus) is returned as a `String` saying what failed; nothing here panics
//! or initialises CUDA. XID errors come from an NVML event set (critical XID events on device
//! 0), drained without waiting at each health reading.

use std::sync::{Mutex, OnceLock};

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::event::EventSet;
use protocol::api::GpuInfo;

use super::Readings;

/// The NVML index of the device GPU workers compute on.
pub const WORK_DEVICE: u32 = 0;

/// The most XID events taken from the event set in one reading (a storm cannot stall it).
const MAX_EVENTS_PER_READING: u32 = 1024;

/// NVML's throttle reasons with the names the heartbeat uses.
const THROTTLE_NAMES: &[(ThrottleReasons, &str)] = &[
    (ThrottleReasons::GPU_IDLE, "gpu_idle"),
    (
        ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
        "applications_clocks_setting",
    ),
    (ThrottleReasons::SW_POWER_CAP, "sw_power_cap"),
    (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
    (ThrottleReasons::SYNC_BOOST, "sync_boost"),
    (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
    (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
    (
        ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
        "hw_power_brake_slowdown",
    ),
    (
        ThrottleReasons::DISPLAY_CLOCK_SETTING,
        "display_clock_setting",
    ),
];

/// The names of the reasons set in `r`, in NVML's bit order.
pub fn throttle_names(r: ThrottleReasons) -> Vec<String> {
    THROTTLE_NAMES
        .iter()
        .filter(|(bit, _)| r.contains(*bit))
        .map(|(_, name)| (*name).to_owned())
        .collect()
}

/// XID bookkeeping: the event set (when the device supports critical XID events) and what was
/// drained from it so far.
struct Xids {
    set: Option<EventSet<'static>>,
    /// Why there is no event set, reported once in the readings' absence of XID data.
    unsupported: Option<String>,
    total: u64,
    last: Option<u64>,
}

static LIB: OnceLock<Result<nvml_wrapper::Nvml, String>> = OnceLock::new();
static XIDS: OnceLock<Mutex<Xids>> = OnceLock::new();

/// A handle on the process's one NVML instance.
#[derive(Clone, Copy)]
pub struct Nvml {
    lib: &'static nvml_wrapper::Nvml,
}

impl std::fmt::Debug for Nvml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nvml")
    }
}

fn text(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(l) => format!("cannot load libnvidia-ml.so.1 ({l})"),
        NvmlError::DriverNotLoaded => "the NVIDIA kernel driver is not loaded".to_owned(),
        NvmlError::NoPermission => "no permission to talk to the NVIDIA driver".to_owned(),
        NvmlError::GpuLost => "the GPU has fallen off the bus".to_owned(),
        other => other.to_string(),
    }
}

impl Nvml {
    /// The process's NVML, initialised on first use; `Err` says why it is unavailable (e.g.
    /// `NVML unavailable: cannot load libnvidia-ml.so.1 (...)` on a host without the driver).
    pub fn get() -> Result<Nvml, String> {
        let lib = LIB.get_or_init(|| {
            // nvml-wrapper returns errors for a missing library; the catch is for anything the
            // library itself might do wrong while loading.
            std::panic::catch_unwind(nvml_wrapper::Nvml::init)
                .map_err(|_| "NVML unavailable: initialising NVML panicked".to_owned())?
                .map_err(|e| format!("NVML unavailable: {}", text(&e)))
        });
        match lib {
            Ok(lib) => Ok(Nvml { lib }),
            Err(e) => Err(e.clone()),
        }
    }

    /// Every device NVML lists, with its VRAM, the driver's version and the CUDA version the
    /// driver supports.
    pub fn inventory(&self) -> Result<Vec<GpuInfo>, String> {
        let count = self
            .lib
            .device_count()
            .map_err(|e| format!("NVML device count: {}", text(&e)))?;
        let driver_version = self.lib.sys_driver_version().ok();
        let cuda_version = self.lib.sys_cuda_driver_version().ok().map(|v| {
            format!(
                "{}.{}",
                nvml_wrapper::cuda_driver_version_major(v),
                nvml_wrapper::cuda_driver_version_minor(v)
            )
        });
        let mut gpus = Vec::new();
        for index in 0..count {
            let d = self
                .lib
                .device_by_index(index)
                .map_err(|e| format!("NVML device {index}: {}", text(&e)))?;
            let name = d
                .name()
                .map_err(|e| format!("NVML device {index} name: {}", text(&e)))?;
            let mem = d
                .memory_info()
                .map_err(|e| format!("NVML device {index} memory: {}", text(&e)))?;
            gpus.push(GpuInfo {
                index,
                name,
                vram_mb: mem.total >> 20,
                driver_version: driver_version.clone(),
                cuda_version: cuda_version.clone(),
            });
        }
        Ok(gpus)
    }

    fn xids(&self) -> &'static Mutex<Xids> {
        XIDS.get_or_init(|| {
            let registered = self
                .lib
                .device_by_index(WORK_DEVICE)
                .map_err(|e| text(&e))
                .and_then(|d| {
                    let supported = d.supported_event_types().map_err(|e| text(&e))?;
                    if !supported.contains(EventTypes::CRITICAL_XID_ERROR) {
                        return Err("the device reports no XID events".to_owned());
                    }
                    let set = self.lib.create_event_set().map_err(|e| text(&e))?;
                    d.register_events(EventTypes::CRITICAL_XID_ERROR, set)
                        .map_err(|e| text(&e.error))
                });
            let (set, unsupported) = match registered {
                Ok(set) => (Some(set), None),
                Err(e) => (None, Some(e)),
            };
            Mutex::new(Xids {
                set,
                unsupported,
                total: 0,
                last: None,
            })
        })
    }

    /// Starts listening for XID errors now (the count starts here), if the device can.
    /// `Err` says why not; the health readings then carry no XID figures.
    pub fn watch_xids(&self) -> Result<(), String> {
        match self.xids().lock() {
            Ok(x) => x.unsupported.clone().map_or(Ok(()), Err),
            Err(_) => Err("XID state poisoned".to_owned()),
        }
    }

    /// One reading of the work device: temperature, throttle reasons, XID errors so far
    /// (draining pending events without waiting). A failed query is `Readings::error`.
    pub fn readings(&self) -> Readings {
        let mut r = Readings::default();
        let d = match self.lib.device_by_index(WORK_DEVICE) {
            Ok(d) => d,
            Err(e) => {
                r.error = Some(format!("device {WORK_DEVICE}: {}", text(&e)));
                return r;
            }
        };
        let mut errors = Vec::new();
        match d.temperature(TemperatureSensor::Gpu) {
            Ok(t) => r.temperature_c = Some(t),
            Err(NvmlError::NotSupported) => {}
            Err(e) => errors.push(format!("temperature: {}", text(&e))),
        }
        match d.current_throttle_reasons() {
            Ok(t) => r.throttle_reasons = throttle_names(t),
            Err(NvmlError::NotSupported) => {}
            Err(e) => errors.push(format!("throttle reasons: {}", text(&e))),
        }
        if let Ok(mut x) = self.xids().lock() {
            let mut drained = 0;
            while drained < MAX_EVENTS_PER_READING {
                let Some(set) = &x.set else { break };
                match set.wait(0) {
                    Ok(ev) => {
                        drained += 1;
                        if ev.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                            x.total += 1;
                            if let Some(XidError::Value(v)) = ev.event_data {
                                x.last = Some(v);
                            }
                        }
                    }
                    Err(NvmlError::Timeout) => break,
                    Err(e) => {
                        errors.push(format!("XID events: {}", text(&e)));
                        break;
                    }
                }
            }
            r.xid_total = x.total;
            r.last_xid = x.last;
        }
        if !errors.is_empty() {
            r.error = Some(errors.join("; "));
        }
        r
    }

    /// Device memory used by process `pid` across all devices, in bytes; `None` when NVML
    /// lists no such compute process (it has not created its CUDA context yet, or has ended).
    pub fn process_vram_bytes(&self, pid: u32) -> Result<Option<u64>, String> {
        let count = self.lib.device_count().map_err(|e| text(&e))?;
        let mut total: Option<u64> = None;
        for index in 0..count {
            let d = self
                .lib
                .device_by_index(index)
                .map_err(|e| format!("device {index}: {}", text(&e)))?;
            let procs = d
                .running_compute_processes()
                .map_err(|e| format!("device {index} processes: {}", text(&e)))?;
            for p in procs.iter().filter(|p| p.pid == pid) {
                if let UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
                    total = Some(total.unwrap_or(0).saturating_add(bytes));
                } else {
                    total = Some(total.unwrap_or(0));
                }
            }
        }
        Ok(total)
    }

    /// The work device's total-energy counter in millijoules (since the driver loaded).
    pub fn energy_mj(&self) -> Result<u64, String> {
        let d = self
            .lib
            .device_by_index(WORK_DEVICE)
            .map_err(|e| text(&e))?;
        d.total_energy_consumption()
            .map_err(|e| format!("total energy: {}", text(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_reasons_have_stable_names() {
        let r = ThrottleReasons::SW_POWER_CAP | ThrottleReasons::HW_THERMAL_SLOWDOWN;
        assert_eq!(throttle_names(r), ["sw_power_cap", "hw_thermal_slowdown"]);
        assert!(throttle_names(ThrottleReasons::empty()).is_empty());
        // Every name the health decision treats as unhealthy is one NVML can report.
        for bad in super::super::UNHEALTHY_THROTTLES {
            assert!(THROTTLE_NAMES.iter().any(|(_, n)| n == bad), "{bad}");
        }
    }

    #[test]
    fn nvml_absence_is_a_value() {
        // Whatever this host has: no panic, and an error names NVML.
        match Nvml::get() {
            Ok(nvml) => {
                eprintln!("NVML present: {:?}", nvml.inventory());
                let _ = nvml.readings();
            }
            Err(e) => assert!(e.starts_with("NVML unavailable: "), "{e}"),
        }
    }
}
