//! What the supervisor knows about the host's NVIDIA GPUs and energy counters, and the pure
//! decisions it takes from them.
//!
//! - [`detect`] gathers a [`GpuReport`]: NVML's devices (name, VRAM, driver and CUDA versions,
//!   from [`nvml`]) and whether `libcuda.so.1` loads (a `dlopen` probe, [`libcuda`]). Every
//!   failure is a value: a host without NVIDIA libraries gets `available: false` and a reason.
//! - [`decide_health`] turns one [`Readings`] (temperature, throttle reasons, XID errors) into
//!   the heartbeat's [`GpuHealth`]; [`health_change`] says which log line a change deserves.
//! - [`vram_over`] is the VRAM watch's decision; [`energy_delta`] a counter difference across
//!   wraparound; [`rapl`] reads the CPU package's energy counter.
//!
//! This module (`mod.rs`) does no I/O. The supervisor must never initialise CUDA itself (the
//! probe only asks the dynamic loader), and nothing here panics on what NVML or sysfs return.

pub mod libcuda;
pub mod nvml;
pub mod rapl;

use protocol::api::{GpuHealth, GpuInfo};

/// What [`detect`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuReport {
    /// NVML answered and sees at least one device.
    pub available: bool,
    /// Why not (`available: false`), in words for the operator.
    pub why: Option<String>,
    /// The devices NVML lists, in NVML's order (index 0 is the one workers compute on).
    pub gpus: Vec<GpuInfo>,
    /// `None` when `libcuda.so.1` loads; otherwise why it does not.
    pub libcuda_error: Option<String>,
}

impl GpuReport {
    /// A report for a miner that was told not to look (`ACCEL_MODE=cpu`).
    pub fn not_probed(why: &str) -> GpuReport {
        GpuReport {
            available: false,
            why: Some(why.to_owned()),
            gpus: Vec::new(),
            libcuda_error: Some(why.to_owned()),
        }
    }

    /// Whether a GPU worker can run here: NVML sees a device and the CUDA driver loads.
    /// `Err` says why not.
    pub fn usable(&self) -> Result<&GpuInfo, String> {
        if !self.available {
            return Err(self
                .why
                .clone()
                .unwrap_or_else(|| "NVML sees no NVIDIA GPU".to_owned()));
        }
        let Some(first) = self.gpus.first() else {
            return Err("NVML lists no device".to_owned());
        };
        match &self.libcuda_error {
            Some(e) => Err(e.clone()),
            None => Ok(first),
        }
    }
}

/// Looks at the host: NVML (loaded at run time; absent is a value) and the `libcuda.so.1`
/// probe. Never initialises CUDA, never panics.
pub fn detect() -> GpuReport {
    let libcuda_error = libcuda::probe().err();
    match nvml::Nvml::get() {
        Err(why) => GpuReport {
            available: false,
            why: Some(why),
            gpus: Vec::new(),
            libcuda_error,
        },
        Ok(nvml) => match nvml.inventory() {
            Ok(gpus) if gpus.is_empty() => GpuReport {
                available: false,
                why: Some("NVML is loaded but lists no device".to_owned()),
                gpus,
                libcuda_error,
            },
            Ok(gpus) => GpuReport {
                available: true,
                why: None,
                gpus,
                libcuda_error,
            },
            Err(why) => GpuReport {
                available: false,
                why: Some(why),
                gpus: Vec::new(),
                libcuda_error,
            },
        },
    }
}

/// When a device counts as unhealthy (from the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthLimits {
    /// `GPU_MAX_TEMP_C`: at or above this temperature the device is unhealthy.
    pub max_temp_c: u32,
}

/// One reading of the device workers compute on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readings {
    pub temperature_c: Option<u32>,
    /// Active clock throttle reasons, by their [`nvml::throttle_names`] names.
    pub throttle_reasons: Vec<String>,
    /// XID errors seen since the supervisor started (all of them, counted from NVML events).
    pub xid_total: u64,
    /// The last XID error's number, when one was seen.
    pub last_xid: Option<u64>,
    /// A reading that failed outright (e.g. the GPU fell off the bus): unhealthy, with why.
    pub error: Option<String>,
}

/// Throttle reasons that mean the hardware is protecting itself (heat, a power brake, an
/// external slowdown signal); power capping and idling are normal and do not count.
pub const UNHEALTHY_THROTTLES: &[&str] = &[
    "hw_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
    "sw_thermal_slowdown",
];

/// The heartbeat's health from one reading: unhealthy on a failed reading, a temperature at or
/// above the limit, a hardware-slowdown or thermal throttle reason, or XID errors new since the
/// previous reading (`xid_seen_before`), with every cause named in `reason`.
pub fn decide_health(r: &Readings, xid_seen_before: u64, limits: HealthLimits) -> GpuHealth {
    let mut why: Vec<String> = Vec::new();
    if let Some(e) = &r.error {
        why.push(format!("cannot read the GPU: {e}"));
    }
    if let Some(t) = r.temperature_c.filter(|t| *t >= limits.max_temp_c) {
        why.push(format!(
            "temperature {t} °C at or above GPU_MAX_TEMP_C = {}",
            limits.max_temp_c
        ));
    }
    let bad: Vec<&str> = r
        .throttle_reasons
        .iter()
        .map(String::as_str)
        .filter(|n| UNHEALTHY_THROTTLES.contains(n))
        .collect();
    if !bad.is_empty() {
        why.push(format!("clocks throttled by {}", bad.join(", ")));
    }
    let new_xids = r.xid_total.saturating_sub(xid_seen_before);
    if new_xids > 0 {
        let last = r
            .last_xid
            .map(|x| format!(", the last XID {x}"))
            .unwrap_or_default();
        why.push(format!("{new_xids} new XID error(s){last}"));
    }
    GpuHealth {
        healthy: why.is_empty(),
        temperature_c: r.temperature_c,
        throttle_reasons: r.throttle_reasons.clone(),
        xid_errors: r.xid_total,
        reason: (!why.is_empty()).then(|| why.join("; ")),
    }
}

/// The log line a health change deserves, if any: one when the device turns unhealthy (with
/// why), one when it is healthy again; none while it stays as it was.
pub fn health_change(before: Option<&GpuHealth>, now: &GpuHealth) -> Option<String> {
    let was_healthy = before.is_none_or(|h| h.healthy);
    match (was_healthy, now.healthy) {
        (true, false) => Some(format!(
            "GPU unhealthy: {}; taking no GPU jobs until it recovers",
            now.reason.as_deref().unwrap_or("no reason given")
        )),
        (false, true) => Some("GPU healthy again; taking GPU jobs".to_owned()),
        _ => None,
    }
}

const MIB: u64 = 1 << 20;

/// The VRAM watch's decision for one poll: the fail message when the job's device memory is
/// over its cap of `cap_mb` MiB. The job's memory is NVML's per-process figure for the worker
/// (`used_bytes`; `None`: it holds none) less `baseline_bytes`, what the worker already held
/// when it was handed the job: its CUDA context, created during start-up, which the workload's
/// own allocation (`TorchBenchParams::vram_mb`) does not count.
pub fn vram_over(used_bytes: Option<u64>, baseline_bytes: u64, cap_mb: u64) -> Option<String> {
    let job = used_bytes?.saturating_sub(baseline_bytes);
    (job > cap_mb.saturating_mul(MIB)).then(|| {
        format!(
            "used {} MiB of VRAM, limit {cap_mb} MiB (limits.vram_mb; not counting the {} MiB \
             the worker's CUDA context held before the job); the worker was killed",
            job.div_ceil(MIB),
            baseline_bytes.div_ceil(MIB)
        )
    })
}

/// `after - before` of a counter that wraps to 0 past `max` (RAPL's `max_energy_range_uj`,
/// or `u64::MAX` for NVML's millijoule counter). At most one wrap is assumed between readings.
pub fn energy_delta(before: u64, after: u64, max: u64) -> u64 {
    if after >= before {
        after - before
    } else {
        max.saturating_sub(before).saturating_add(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HealthLimits = HealthLimits { max_temp_c: 90 };

    #[test]
    fn health_from_readings() {
        let ok = Readings {
            temperature_c: Some(60),
            throttle_reasons: vec!["sw_power_cap".into(), "gpu_idle".into()],
            xid_total: 2,
            last_xid: Some(13),
            error: None,
        };
        let h = decide_health(&ok, 2, LIMITS);
        assert!(h.healthy, "{h:?}");
        assert_eq!(
            (h.temperature_c, h.xid_errors, h.reason),
            (Some(60), 2, None)
        );
        assert_eq!(h.throttle_reasons, ["sw_power_cap", "gpu_idle"]);

        let hot = Readings {
            temperature_c: Some(90),
            ..ok.clone()
        };
        let h = decide_health(&hot, 2, LIMITS);
        assert!(!h.healthy);
        assert_eq!(
            h.reason.as_deref(),
            Some("temperature 90 °C at or above GPU_MAX_TEMP_C = 90")
        );

        let throttled = Readings {
            throttle_reasons: vec!["sw_power_cap".into(), "hw_thermal_slowdown".into()],
            ..ok.clone()
        };
        let h = decide_health(&throttled, 2, LIMITS);
        assert_eq!(
            h.reason.as_deref(),
            Some("clocks throttled by hw_thermal_slowdown")
        );

        let xid = Readings {
            xid_total: 3,
            last_xid: Some(79),
            ..ok.clone()
        };
        let h = decide_health(&xid, 2, LIMITS);
        assert!(!h.healthy);
        assert_eq!(
            h.reason.as_deref(),
            Some("1 new XID error(s), the last XID 79")
        );
        // The next reading without new XIDs is healthy again.
        assert!(decide_health(&xid, 3, LIMITS).healthy);

        let lost = Readings {
            error: Some("GPU is lost".into()),
            temperature_c: Some(95),
            ..Readings::default()
        };
        let h = decide_health(&lost, 0, LIMITS);
        assert_eq!(
            h.reason.as_deref(),
            Some("cannot read the GPU: GPU is lost; temperature 95 °C at or above GPU_MAX_TEMP_C = 90")
        );
    }

    #[test]
    fn one_log_line_per_change() {
        let good = GpuHealth {
            healthy: true,
            ..GpuHealth::default()
        };
        let bad = GpuHealth {
            healthy: false,
            reason: Some("1 new XID error(s)".into()),
            ..GpuHealth::default()
        };
        assert_eq!(health_change(None, &good), None);
        assert_eq!(health_change(Some(&good), &good), None);
        assert_eq!(
            health_change(Some(&good), &bad).as_deref(),
            Some("GPU unhealthy: 1 new XID error(s); taking no GPU jobs until it recovers")
        );
        assert!(health_change(None, &bad).is_some());
        assert_eq!(health_change(Some(&bad), &bad), None);
        assert_eq!(
            health_change(Some(&bad), &good).as_deref(),
            Some("GPU healthy again; taking GPU jobs")
        );
    }

    #[test]
    fn vram_watch_decision() {
        assert_eq!(vram_over(None, 0, 100), None);
        assert_eq!(vram_over(Some(100 * MIB), 0, 100), None);
        assert_eq!(
            vram_over(Some(100 * MIB + 1), 0, 100).as_deref(),
            Some(
                "used 101 MiB of VRAM, limit 100 MiB (limits.vram_mb; not counting the 0 MiB \
                 the worker's CUDA context held before the job); the worker was killed"
            )
        );
        // The context the worker held at hand-off is not the job's.
        assert_eq!(vram_over(Some(600 * MIB), 500 * MIB, 100), None);
        let m = vram_over(Some(601 * MIB), 500 * MIB, 100).unwrap();
        assert!(m.starts_with("used 101 MiB of VRAM, limit 100 MiB"), "{m}");
        assert!(m.contains("the 500 MiB"), "{m}");
        // Less than the baseline (memory freed) is nothing.
        assert_eq!(vram_over(Some(MIB), 500 * MIB, 0), None);
        assert!(vram_over(Some(1), 0, 0).is_some());
        assert_eq!(vram_over(Some(u64::MAX), 0, u64::MAX), None);
    }

    #[test]
    fn energy_across_wraparound() {
        assert_eq!(energy_delta(10, 25, 100), 15);
        assert_eq!(energy_delta(90, 5, 100), 15);
        assert_eq!(energy_delta(7, 7, 100), 0);
        assert_eq!(energy_delta(u64::MAX - 1, 3, u64::MAX), 4);
        // A reading above the stated range (a broken counter) does not underflow.
        assert_eq!(energy_delta(150, 5, 100), 5);
    }

    #[test]
    fn detect_on_this_host_never_panics_and_says_why_without_nvml() {
        let report = detect();
        eprintln!("{report:?}");
        if libcuda::probe_named(c"libnvidia-ml.so.1").is_err() {
            // No NVIDIA driver here (this machine, CI): a value, with the reason.
            assert!(!report.available);
            assert!(report.gpus.is_empty());
            let why = report.why.as_deref().unwrap_or_default();
            assert!(
                why.starts_with("NVML unavailable: cannot load libnvidia-ml.so.1"),
                "{why}"
            );
            assert_eq!(report.usable().unwrap_err(), why);
        } else {
            eprintln!("NVML loads here: {:?}", report.usable().map(|g| &g.name));
        }
    }

    #[test]
    fn usable_needs_a_device_and_the_driver() {
        let info = GpuInfo {
            index: 0,
            name: "NVIDIA H100".into(),
            vram_mb: 81559,
            driver_version: None,
            cuda_version: None,
        };
        let mut r = GpuReport {
            available: true,
            why: None,
            gpus: vec![info.clone()],
            libcuda_error: None,
        };
        assert_eq!(r.usable(), Ok(&info));
        r.libcuda_error = Some("libcuda.so.1: cannot open".into());
        assert_eq!(r.usable().unwrap_err(), "libcuda.so.1: cannot open");
        let none = GpuReport::not_probed("ACCEL_MODE=cpu");
        assert_eq!(none.usable().unwrap_err(), "ACCEL_MODE=cpu");
    }
}
