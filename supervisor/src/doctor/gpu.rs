//! The doctor's GPU lines: NVML (driver version, devices), `libcuda.so.1`, cuBLAS, and the
//! VRAM cap, judged against `ACCEL_MODE` the way `run` behaves.
//!
//! `run` never refuses to start for want of a GPU: `auto` quietly computes on the CPU, `gpu`
//! falls back to the CPU with a warning (`policy::detect_mode`), `cpu` never looks. The lines
//! follow that: a missing GPU is **skip** under `auto` and `cpu` (a CPU host is a normal host),
//! **warn** under `gpu` (the operator asked for a GPU and will not get one), and never FAIL; a
//! driver that is installed but does not work is **warn** under `auto` too, since the operator
//! evidently meant to use it. A GPU that computes wrong answers is the self-test's FAIL.
//!
//! [`probe`] only asks NVML and the dynamic loader; it never initialises CUDA.

use protocol::api::Mode;

use super::{Line, Status};
use crate::config::AccelMode;
use crate::gpu::{self, libcuda, GpuReport};
use crate::policy;

/// What the GPU probes found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuFacts {
    /// `ACCEL_MODE`.
    pub accel_mode: AccelMode,
    /// `MAX_JOB_VRAM_MB`.
    pub max_vram_mb: u64,
    /// `None` under `ACCEL_MODE=cpu` (not probed, as `run` does not).
    pub probe: Option<GpuProbe>,
}

/// The probes' results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuProbe {
    /// NVML's devices and the `libcuda.so.1` probe ([`gpu::detect`]).
    pub report: GpuReport,
    /// Whether `libnvidia-ml.so.1` loads (tells "no driver" from "a broken driver").
    pub nvml_lib: Result<(), String>,
    /// The cuBLAS name that loads, or why none does.
    pub cublas: Result<String, String>,
}

/// Probes NVML, libcuda and cuBLAS, unless `accel_mode` is `cpu`.
pub fn probe(accel_mode: AccelMode, max_vram_mb: u64) -> GpuFacts {
    let probe = (accel_mode != AccelMode::Cpu).then(|| GpuProbe {
        report: gpu::detect(),
        nvml_lib: libcuda::loads(libcuda::LIBNVML),
        cublas: libcuda::probe_cublas().map(|n| n.to_string_lossy().into_owned()),
    });
    GpuFacts {
        accel_mode,
        max_vram_mb,
        probe,
    }
}

impl GpuFacts {
    /// The mode `run` would compute in here.
    pub fn mode(&self) -> Mode {
        match &self.probe {
            None => Mode::Cpu,
            Some(p) => policy::detect_mode(self.accel_mode, &p.report).0,
        }
    }
}

const DRIVER_FIX: &str = "install the NVIDIA driver (Debian: apt install nvidia-driver from \
                          non-free, or NVIDIA's packages), reboot or load the module, and check \
                          that nvidia-smi lists the GPU";

/// The `gpu`, `libcuda`, `libcublas` (and, in GPU mode, `gpu vram`) lines.
pub fn check(g: &GpuFacts) -> Vec<Line> {
    let Some(p) = &g.probe else {
        return vec![Line::new(
            Status::Skip,
            "gpu",
            "ACCEL_MODE=cpu: not probed; jobs run on the CPU",
        )
        .fix("to mine on a GPU, set ACCEL_MODE=auto (or gpu) and run doctor again")];
    };
    let gpu_mode = g.accel_mode == AccelMode::Gpu;
    let no_driver = p.nvml_lib.is_err() && p.report.libcuda_error.is_some();
    let fallback = if gpu_mode {
        "ACCEL_MODE=gpu, so `run` warns and computes on the CPU"
    } else {
        "ACCEL_MODE=auto computes on the CPU"
    };
    // For a missing GPU: skip on a CPU host under auto, warn when a GPU was asked for or a
    // driver is installed.
    let absent = if gpu_mode || !no_driver {
        Status::Warn
    } else {
        Status::Skip
    };
    let mut lines = Vec::new();
    let usable = p.report.usable();
    lines.push(if p.report.available {
        let names: Vec<String> = p
            .report
            .gpus
            .iter()
            .map(|d| format!("{}: {} ({} MiB)", d.index, d.name, d.vram_mb))
            .collect();
        let first = p.report.gpus.first();
        Line::new(
            Status::Ok,
            "gpu",
            format!(
                "NVML sees {} device(s): {}; driver {}, CUDA {}; workers compute on device 0",
                p.report.gpus.len(),
                names.join(", "),
                first
                    .and_then(|d| d.driver_version.as_deref())
                    .unwrap_or("?"),
                first.and_then(|d| d.cuda_version.as_deref()).unwrap_or("?"),
            ),
        )
    } else {
        let why = p
            .report
            .why
            .clone()
            .unwrap_or_else(|| "NVML sees no NVIDIA GPU".into());
        let what = if no_driver {
            "no NVIDIA GPU driver on this host"
        } else {
            "the NVIDIA driver is installed but NVML sees no usable GPU"
        };
        Line::new(absent, "gpu", format!("{what} ({why}); {fallback}")).fix(DRIVER_FIX)
    });
    lines.push(match (&p.report.libcuda_error, p.report.available) {
        (None, _) => Line::new(
            Status::Ok,
            "libcuda",
            "libcuda.so.1 loads (GPU workers initialise CUDA from it)",
        ),
        (Some(e), false) => {
            Line::new(absent, "libcuda", format!("no GPU, and {e}")).fix(DRIVER_FIX)
        }
        (Some(e), true) => Line::new(
            Status::Warn,
            "libcuda",
            format!("NVML sees a GPU but {e}: it stays idle; {fallback}"),
        )
        .fix(
            "install the driver's CUDA library (Debian: libcuda1, part of nvidia-driver) and \
             check that ldconfig -p lists libcuda.so.1: workers start with an empty environment, \
             so LD_LIBRARY_PATH does not reach them",
        ),
    });
    lines.push(match (&p.cublas, &usable) {
        (Ok(name), Ok(_)) => Line::new(
            Status::Ok,
            "libcublas",
            format!("{name} loads: GPU workers compute the products with cuBLAS"),
        ),
        (Ok(name), Err(_)) => Line::new(
            Status::Ok,
            "libcublas",
            format!("{name} loads (used once a GPU is usable)"),
        ),
        (Err(e), Ok(_)) => Line::new(
            Status::Warn,
            "libcublas",
            format!("{e}: GPU workers use the miner's own SGEMM kernel, which is slower"),
        )
        .fix(
            "install cuBLAS (e.g. libcublas-12-x from NVIDIA's CUDA repository, or libcublas11 \
             from Debian non-free) and check that ldconfig -p lists libcublas.so.12 or .11",
        ),
        (Err(e), Err(_)) => {
            Line::new(absent, "libcublas", format!("no usable GPU, and {e}")).fix(format!(
                "{DRIVER_FIX}; then install cuBLAS (libcublas-12-x from NVIDIA's CUDA repository)"
            ))
        }
    });
    if usable.is_ok() && g.max_vram_mb == 0 {
        lines.push(
            Line::new(
                Status::Warn,
                "gpu vram",
                "MAX_JOB_VRAM_MB=0: every job that asks for device memory will be refused",
            )
            .fix("set MAX_JOB_VRAM_MB to the MiB of device memory one job may use"),
        );
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::api::GpuInfo;

    fn facts(mode: AccelMode, report: GpuReport, nvml: bool, cublas: bool) -> GpuFacts {
        GpuFacts {
            accel_mode: mode,
            max_vram_mb: 8192,
            probe: Some(GpuProbe {
                report,
                nvml_lib: if nvml {
                    Ok(())
                } else {
                    Err("not found".into())
                },
                cublas: if cublas {
                    Ok("libcublas.so.12".into())
                } else {
                    Err("none of the 13 names cudarc tries loads (...)".into())
                },
            }),
        }
    }

    fn no_gpu() -> GpuReport {
        GpuReport {
            available: false,
            why: Some("NVML unavailable: cannot load libnvidia-ml.so.1 (...)".into()),
            gpus: vec![],
            libcuda_error: Some("no CUDA driver: libcuda.so.1 cannot be loaded (...)".into()),
        }
    }

    fn h100(libcuda: bool) -> GpuReport {
        GpuReport {
            available: true,
            why: None,
            gpus: vec![GpuInfo {
                index: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                vram_mb: 81559,
                driver_version: Some("550.54.15".into()),
                cuda_version: Some("12.4".into()),
            }],
            libcuda_error: (!libcuda)
                .then(|| "no CUDA driver: libcuda.so.1 cannot be loaded (x)".into()),
        }
    }

    fn statuses(lines: &[Line]) -> Vec<Status> {
        lines.iter().map(|l| l.status).collect()
    }

    #[test]
    fn a_cpu_host_is_skipped_under_auto_and_warned_under_gpu_never_failed() {
        let auto = check(&facts(AccelMode::Auto, no_gpu(), false, false));
        assert_eq!(statuses(&auto), [Status::Skip; 3]);
        assert!(
            auto[0]
                .finding
                .starts_with("no NVIDIA GPU driver on this host"),
            "{}",
            auto[0]
        );
        assert!(auto[0]
            .finding
            .ends_with("ACCEL_MODE=auto computes on the CPU"));
        let gpu = check(&facts(AccelMode::Gpu, no_gpu(), false, false));
        assert_eq!(statuses(&gpu), [Status::Warn; 3]);
        assert!(
            gpu[0]
                .finding
                .contains("`run` warns and computes on the CPU"),
            "{}",
            gpu[0]
        );
        let cpu = check(&GpuFacts {
            accel_mode: AccelMode::Cpu,
            max_vram_mb: 0,
            probe: None,
        });
        assert_eq!(statuses(&cpu), [Status::Skip]);
        for l in auto.iter().chain(&gpu).chain(&cpu) {
            assert!(l.fix.is_some(), "{l}");
        }
    }

    #[test]
    fn a_broken_driver_warns_even_under_auto() {
        let mut report = no_gpu();
        report.why = Some("NVML unavailable: the NVIDIA kernel driver is not loaded".into());
        let lines = check(&facts(AccelMode::Auto, report, true, false));
        assert_eq!(lines[0].status, Status::Warn, "{}", lines[0]);
        assert!(lines[0].finding.contains("installed but"), "{}", lines[0]);
        let missing_libcuda = check(&facts(AccelMode::Auto, h100(false), true, true));
        assert_eq!(
            statuses(&missing_libcuda),
            [Status::Ok, Status::Warn, Status::Ok]
        );
        assert!(missing_libcuda[1]
            .fix
            .as_deref()
            .unwrap()
            .contains("ldconfig -p"));
    }

    #[test]
    fn a_working_gpu_is_ok_and_missing_cublas_or_vram_cap_warns() {
        let lines = check(&facts(AccelMode::Auto, h100(true), true, true));
        assert_eq!(statuses(&lines), [Status::Ok; 3]);
        assert_eq!(
            lines[0].to_string(),
            "ok    gpu: NVML sees 1 device(s): 0: NVIDIA H100 80GB HBM3 (81559 MiB); driver 550.54.15, CUDA 12.4; workers compute on device 0"
        );
        let no_blas = check(&facts(AccelMode::Gpu, h100(true), true, false));
        assert_eq!(no_blas[2].status, Status::Warn);
        assert!(
            no_blas[2].finding.contains("own SGEMM kernel"),
            "{}",
            no_blas[2]
        );
        let mut f = facts(AccelMode::Auto, h100(true), true, true);
        f.max_vram_mb = 0;
        let lines = check(&f);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[3].status, Status::Warn);
        assert_eq!(f.mode(), Mode::Gpu);
        assert_eq!(
            facts(AccelMode::Gpu, no_gpu(), false, false).mode(),
            Mode::Cpu
        );
    }
}
