//! The worker confines itself, in one fixed order, before it says Hello.
//!
//! ```text
//! (0. cgroup: joined by the supervisor before exec; the worker does not touch it)
//!  0. prepare       close every descriptor above 3, check the job directory, pick the int8 kernel
//!  1. namespaces    unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS), setgroups deny,
//!                   uid/gid map of the worker's own ids; the job dir becomes a private tmpfs
//!                   of the job's disk budget; with the mount view: build it now
//!  2. rlimits       CORE 0, NOFILE, FSIZE, NPROC (soft = hard), SIGXFSZ ignored
//!  3. no_new_privs  prctl(PR_SET_NO_NEW_PRIVS)
//!  4. capabilities  bounding, ambient, inheritable, permitted, effective: all emptied, verified
//!  5. filesystem    Landlock (read-only libraries, a few devices, the job dir read-write;
//!                   GPU workers also /dev/nvidia* with ioctls and the driver's /proc and /sys
//!                   files read-only) — or nothing more when step 1 built the mount view;
//!                   chdir to the job dir
//!  6. device        GPU workers (`device.rs`): is libcuda loadable (if not: fail, naming it),
//!                   open GPU 0 (context, streams, PTX module JIT-compiled, cuBLAS), warm up;
//!                   CPU workers: the int8 kernel the plan chose (named in the Hello line)
//!  7. seccomp       aitbc_seccomp::install, the kind's profile (on every thread, TSYNC)
//!  -> Hello, then the job is read; before any of its work the worker lowers RLIMIT_CPU and
//!     RLIMIT_AS to the job's values (`apply_job_limits`; the seccomp policy allows just those)
//! ```
//!
//! Why this order: user namespaces can only be entered by a single-threaded process and give
//! the capabilities (over the new namespace only) that building the mount view needs; rlimits
//! are set inside the namespace so RLIMIT_NPROC counts only this worker; no_new_privs is what
//! lets an unprivileged process apply Landlock and seccomp; capabilities go before Landlock so
//! nothing privileged is left while the filesystem is shaped; Landlock is per thread, so it
//! comes before CUDA starts its threads (so CUDA's `dlopen` of libcuda and everything the
//! driver reads happen under it: the libraries are readable and executable, the driver's files
//! are granted); seccomp comes last because the earlier steps need system calls it forbids
//! (unshare, mount, landlock_*, prctl on capabilities), and CUDA's initialisation more than a
//! job needs. A GPU worker needs Landlock: the mount view has no NVIDIA device nodes, so
//! `--kind gpu` with `--fs mount` (or `auto` on a kernel without Landlock) is refused before
//! the first step, and so is a `--cpu-kernel` this CPU lacks (the plan picks the kernel from
//! `cpuid` alone: it never runs an instruction the CPU does not have).
//!
//! The order is enforced by types: each step is a method that consumes the previous stage and
//! returns the next, and [`confine`] is the only way in. A step that fails returns an error
//! naming the step and the errno; the worker prints it and exits before Hello. Each step's
//! effect is checked from outside the process by `tests/suite/confinement.rs`.
//!
//! This module must never be run in a process with more than one thread, never skip a step
//! silently (the [`Report`] says what was applied), and never continue after a step fails.

mod caps;
mod device;
mod landlock;
mod mountns;
mod namespaces;
mod rlimits;
mod scratch;

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use self::landlock::kernel_abi as landlock_kernel_abi;
pub use self::rlimits::{apply_job as apply_job_limits, Limits, NPROC};
use crate::workload::torch_bench::Kernel;
use crate::workload::Device;
use crate::WorkerError;
use aitbc_protocol::api::Mode;
use aitbc_protocol::args::{FsMode, WorkerArgs};

/// What every worker may read, whichever filesystem confinement it gets (Landlock grants
/// these; the mount view binds them): directories (or the same symlink, on merged-/usr hosts)...
pub const READ_ONLY_DIRS: [&str; 3] = ["/usr", "/lib", "/lib64"];
/// ...and single files: the dynamic loader's cache.
pub const READ_ONLY_FILES: [&str; 1] = ["/etc/ld.so.cache"];
/// The device nodes every worker may open, read and write.
pub const DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// The confinement steps, in the one order the worker takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Close stray descriptors, check the job directory, read what libraries read lazily.
    Prepare,
    /// New user, network and mount namespaces, the scratch tmpfs on the job directory (and
    /// the mount view with `--fs mount`).
    Namespaces,
    Rlimits,
    NoNewPrivs,
    Capabilities,
    /// Landlock (the mount view was built with the namespaces).
    Filesystem,
    /// GPU workers: CUDA initialisation; CPU workers: the int8 kernel the plan chose.
    Device,
    Seccomp,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 8] = [
        Step::Prepare,
        Step::Namespaces,
        Step::Rlimits,
        Step::NoNewPrivs,
        Step::Capabilities,
        Step::Filesystem,
        Step::Device,
        Step::Seccomp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Prepare => "prepare",
            Step::Namespaces => "namespaces",
            Step::Rlimits => "rlimits",
            Step::NoNewPrivs => "no_new_privs",
            Step::Capabilities => "capabilities",
            Step::Filesystem => "filesystem",
            Step::Device => "device",
            Step::Seccomp => "seccomp",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The filesystem confinement chosen for this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fs {
    /// Landlock; `required` when `--fs landlock` asked for it explicitly.
    Landlock { required: bool },
    /// The mount-namespace view.
    MountView,
}

/// Everything the steps need, decided before the first one runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub job_dir: PathBuf,
    pub fs: Fs,
    pub limits: Limits,
    pub kind: Mode,
    /// The int8 kernel of the CPU chain: `--cpu-kernel`, checked against this CPU.
    pub cpu_kernel: Kernel,
}

impl Plan {
    /// Decides the plan for `args` on a kernel offering Landlock ABI `landlock_abi` (0: none),
    /// on this CPU (`cpuid`: which int8 kernels it runs). `--fs landlock` without Landlock,
    /// and a `--cpu-kernel` this CPU lacks, are refused here, before anything is changed.
    pub fn new(args: &WorkerArgs, landlock_abi: i32) -> Result<Plan, WorkerError> {
        let cpu_kernel =
            Kernel::choose(args.cpu_kernel).map_err(|reason| WorkerError::SetupRefused {
                step: Step::Device,
                reason: format!("--cpu-kernel {}: {reason}", args.cpu_kernel),
            })?;
        let fs = match (args.fs, landlock_abi > 0) {
            (FsMode::Auto, true) => Fs::Landlock { required: false },
            (FsMode::Auto, false) | (FsMode::Mount, _) => Fs::MountView,
            (FsMode::Landlock, true) => Fs::Landlock { required: true },
            (FsMode::Landlock, false) => {
                return Err(WorkerError::SetupRefused {
                    step: Step::Filesystem,
                    reason: "--fs landlock, but this kernel has no Landlock (not built in, or \
                             not in the boot's lsm= list); use --fs mount or --fs auto"
                        .into(),
                })
            }
        };
        if args.kind == Mode::Gpu && fs == Fs::MountView {
            return Err(WorkerError::SetupRefused {
                step: Step::Filesystem,
                reason: format!(
                    "--kind gpu needs Landlock: the mount view has no NVIDIA device nodes ({})",
                    if landlock_abi > 0 {
                        "use --fs landlock or --fs auto"
                    } else {
                        "this kernel has no Landlock; run the miner with ACCEL_MODE=cpu"
                    }
                ),
            });
        }
        Ok(Plan {
            job_dir: args.job_dir.clone(),
            fs,
            limits: Limits::for_worker(args.kind, args.file_size_mb),
            kind: args.kind,
            cpu_kernel,
        })
    }
}

/// What the worker applied, step by step: the Hello line and the time each step took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    step: Step,
    /// What the Hello line says for this step (`None`: nothing worth naming).
    summary: Option<String>,
    took: Duration,
}

impl Report {
    fn push(&mut self, step: Step, summary: Option<String>, took: Duration) {
        self.entries.push(Entry {
            step,
            summary,
            took,
        });
    }

    /// The one human line for `Hello.sandbox`: each applied step's summary, in order, joined
    /// with `"; "`.
    pub fn line(&self) -> String {
        self.entries
            .iter()
            .filter_map(|e| e.summary.as_deref())
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// How long each step took, in order (a step may appear twice: the mount view is built
    /// during the namespace step but reported as the filesystem confinement it is).
    pub fn timings(&self) -> Vec<(Step, Duration)> {
        self.entries.iter().map(|e| (e.step, e.took)).collect()
    }
}

/// A fully confined worker: what it applied, and the device it computes on.
#[derive(Debug)]
pub struct Confined {
    pub report: Report,
    /// The CPU, or the GPU opened in step 6 (kept for the job).
    pub device: Device,
}

/// Runs every step, in order, on this (single-threaded) process. On success the process is
/// fully confined, the report names what was applied, and a GPU worker holds its opened GPU.
pub fn confine(plan: &Plan) -> Result<Confined, WorkerError> {
    let confined = Start::new(plan)
        .prepare()?
        .enter_namespaces()?
        .set_rlimits()?
        .set_no_new_privs()?
        .drop_capabilities()?
        .confine_filesystem()?
        .init_device()?
        .install_seccomp()?;
    Ok(Confined {
        report: confined.report,
        device: confined.device,
    })
}

/// The state carried from step to step.
struct Progress<'a> {
    plan: &'a Plan,
    report: Report,
}

impl Progress<'_> {
    /// Runs `f` as `step`, recording its summary and duration.
    fn run<T>(
        &mut self,
        step: Step,
        f: impl FnOnce(&Plan) -> Result<(T, Option<String>), WorkerError>,
    ) -> Result<T, WorkerError> {
        let start = Instant::now();
        let (out, summary) = f(self.plan)?;
        self.report.push(step, summary, start.elapsed());
        Ok(out)
    }
}

// One type per stage: a step can only be called on the stage before it.
struct Start<'a>(Progress<'a>);
struct Prepared<'a>(Progress<'a>);
struct Namespaced<'a>(Progress<'a>);
struct Limited<'a>(Progress<'a>);
struct NoNewPrivs<'a>(Progress<'a>);
struct Powerless<'a>(Progress<'a>);
struct FsConfined<'a>(Progress<'a>);
struct DeviceReady<'a>(Progress<'a>, Device);
struct Sealed {
    report: Report,
    device: Device,
}

impl<'a> Start<'a> {
    fn new(plan: &'a Plan) -> Start<'a> {
        Start(Progress {
            plan,
            report: Report::default(),
        })
    }

    /// Step 0.
    fn prepare(mut self) -> Result<Prepared<'a>, WorkerError> {
        self.0.run(Step::Prepare, |plan| {
            close_above_3()?;
            check_job_dir(plan)?;
            crate::workload::warm_up();
            Ok(((), None))
        })?;
        Ok(Prepared(self.0))
    }
}

impl<'a> Prepared<'a> {
    /// Step 1 (and the mount view, when chosen).
    fn enter_namespaces(mut self) -> Result<Namespaced<'a>, WorkerError> {
        let mount = self.0.plan.fs == Fs::MountView;
        self.0.run(Step::Namespaces, |plan| {
            namespaces::enter()?;
            let scratch = scratch::mount_scratch(&plan.job_dir, plan.limits.fsize_mb())?;
            Ok(((), Some(format!("userns+netns+mntns; {scratch}"))))
        })?;
        if mount {
            self.0.run(Step::Filesystem, |plan| {
                let view = mountns::build(&plan.job_dir)?;
                Ok(((), Some(view.describe())))
            })?;
        }
        Ok(Namespaced(self.0))
    }
}

impl<'a> Namespaced<'a> {
    /// Step 2.
    fn set_rlimits(mut self) -> Result<Limited<'a>, WorkerError> {
        self.0.run(Step::Rlimits, |plan| {
            let applied = rlimits::apply(&plan.limits)?;
            Ok(((), Some(applied.describe())))
        })?;
        Ok(Limited(self.0))
    }
}

impl<'a> Limited<'a> {
    /// Step 3.
    fn set_no_new_privs(mut self) -> Result<NoNewPrivs<'a>, WorkerError> {
        self.0.run(Step::NoNewPrivs, |_| {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(WorkerError::Setup {
                    step: Step::NoNewPrivs,
                    what: "prctl(PR_SET_NO_NEW_PRIVS)".into(),
                    source: io::Error::last_os_error(),
                });
            }
            Ok(((), Some("no_new_privs".to_string())))
        })?;
        Ok(NoNewPrivs(self.0))
    }
}

impl<'a> NoNewPrivs<'a> {
    /// Step 4.
    fn drop_capabilities(mut self) -> Result<Powerless<'a>, WorkerError> {
        self.0.run(Step::Capabilities, |_| {
            caps::drop_all()?;
            Ok(((), Some("caps=0".to_string())))
        })?;
        Ok(Powerless(self.0))
    }
}

impl<'a> Powerless<'a> {
    /// Step 5.
    fn confine_filesystem(mut self) -> Result<FsConfined<'a>, WorkerError> {
        if let Fs::Landlock { required } = self.0.plan.fs {
            self.0.run(Step::Filesystem, |plan| {
                let gpu = match plan.kind {
                    Mode::Gpu => landlock::gpu_rules(),
                    Mode::Cpu => Vec::new(),
                };
                let rules = landlock::rules(plan.kind, &plan.job_dir, &gpu);
                let applied = landlock::apply(&rules, required)?;
                Ok(((), Some(applied.describe())))
            })?;
        }
        std::env::set_current_dir(&self.0.plan.job_dir).map_err(|e| WorkerError::Setup {
            step: Step::Filesystem,
            what: format!(
                "chdir to the job directory {}",
                self.0.plan.job_dir.display()
            ),
            source: e,
        })?;
        Ok(FsConfined(self.0))
    }
}

impl<'a> FsConfined<'a> {
    /// Step 6: a GPU worker initialises CUDA after Landlock and before seccomp (see
    /// [`device::open_gpu`]); a CPU worker only names the int8 kernel its plan chose.
    fn init_device(mut self) -> Result<DeviceReady<'a>, WorkerError> {
        let device = self.0.run(Step::Device, |plan| match plan.kind {
            Mode::Cpu => Ok((
                Device::Cpu {
                    kernel: plan.cpu_kernel,
                },
                Some(format!("int8 kernel {}", plan.cpu_kernel.name())),
            )),
            Mode::Gpu => {
                let (gpu, summary) = device::open_gpu(device::GPU_ORDINAL)?;
                Ok((Device::Gpu(Box::new(gpu)), Some(summary)))
            }
        })?;
        Ok(DeviceReady(self.0, device))
    }
}

impl DeviceReady<'_> {
    /// Step 7.
    fn install_seccomp(mut self) -> Result<Sealed, WorkerError> {
        self.0.run(Step::Seccomp, |plan| {
            let (profile, name) = match plan.kind {
                Mode::Cpu => (aitbc_seccomp::Profile::Cpu, "seccomp cpu"),
                Mode::Gpu => (aitbc_seccomp::Profile::Gpu, "seccomp gpu"),
            };
            let cx = aitbc_seccomp::Context {
                pid: std::process::id(),
            };
            aitbc_seccomp::install(profile, crate::workload::SERVED, &cx).map_err(|e| {
                WorkerError::SetupRefused {
                    step: Step::Seccomp,
                    reason: e.to_string(),
                }
            })?;
            Ok(((), Some(name.to_string())))
        })?;
        Ok(Sealed {
            report: self.0.report,
            device: self.1,
        })
    }
}

/// Closes every descriptor above 3 (the socket). The supervisor already starts workers with
/// exactly 0-3; this makes it true whoever started the worker.
fn close_above_3() -> Result<(), WorkerError> {
    // SAFETY: close_range on descriptors this process owns; nothing in the worker holds one
    // above 3 at this point (the socket is fd 3).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(WorkerError::Setup {
            step: Step::Prepare,
            what: "close_range(4, ~0)".into(),
            source: err,
        });
    }
    // Kernels before 5.9: close them one by one, up to the descriptor limit.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(1 << 20) as libc::c_int
    } else {
        1024
    };
    for fd in 4..max {
        // SAFETY: close(2) on numbers above 3, which nothing in the worker owns at this point
        // (the socket is fd 3); EBADF for descriptors that are not open is expected.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// The job directory must exist, be a directory and belong to the worker's own uid (the
/// supervisor creates it so, mode 0700).
fn check_job_dir(plan: &Plan) -> Result<(), WorkerError> {
    let dir = &plan.job_dir;
    let meta = std::fs::metadata(dir).map_err(|e| WorkerError::Setup {
        step: Step::Prepare,
        what: format!("--job-dir {}", dir.display()),
        source: e,
    })?;
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    let refuse = |reason: String| WorkerError::SetupRefused {
        step: Step::Prepare,
        reason: format!("--job-dir {}: {reason}", dir.display()),
    };
    if !meta.is_dir() {
        return Err(refuse("not a directory".into()));
    }
    if meta.uid() != euid {
        return Err(refuse(format!(
            "owned by uid {}, not by the worker's uid {euid}",
            meta.uid()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aitbc_protocol::args::{CpuKernel, DEFAULT_FILE_SIZE_MB};

    fn args(fs: FsMode) -> WorkerArgs {
        WorkerArgs {
            job_dir: "/j".into(),
            fs,
            file_size_mb: DEFAULT_FILE_SIZE_MB,
            kind: Mode::Cpu,
            cpu_kernel: CpuKernel::Auto,
        }
    }

    #[test]
    fn the_plan_takes_the_named_kernel_or_refuses_before_the_first_step() {
        let plan = |kind, cpu_kernel| {
            Plan::new(
                &WorkerArgs {
                    kind,
                    cpu_kernel,
                    ..args(FsMode::Auto)
                },
                7,
            )
        };
        assert_eq!(
            plan(Mode::Cpu, CpuKernel::Auto).unwrap().cpu_kernel,
            Kernel::detect()
        );
        for k in Kernel::ALL {
            for kind in [Mode::Cpu, Mode::Gpu] {
                match plan(kind, k.choice()) {
                    Ok(p) => {
                        assert!(k.available(), "{} planned on a CPU that lacks it", k.name());
                        assert_eq!(p.cpu_kernel, k);
                    }
                    Err(e) => {
                        assert!(!k.available(), "{}: {e}", k.name());
                        let e = e.to_string();
                        let want = format!(
                            "confinement step device: --cpu-kernel {0}: this CPU lacks the {0} \
                             int8 kernel (it runs ",
                            k.name()
                        );
                        assert!(e.starts_with(&want), "{e}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_plan_picks_the_filesystem_confinement() {
        let fs = |mode, abi| Plan::new(&args(mode), abi).map(|p| p.fs);
        assert_eq!(
            fs(FsMode::Auto, 7).unwrap(),
            Fs::Landlock { required: false }
        );
        assert_eq!(fs(FsMode::Auto, 0).unwrap(), Fs::MountView);
        assert_eq!(fs(FsMode::Mount, 7).unwrap(), Fs::MountView);
        assert_eq!(
            fs(FsMode::Landlock, 1).unwrap(),
            Fs::Landlock { required: true }
        );
        let e = fs(FsMode::Landlock, 0).unwrap_err().to_string();
        assert!(
            e.starts_with("confinement step filesystem: --fs landlock, but this kernel has no"),
            "{e}"
        );
    }

    #[test]
    fn a_gpu_worker_needs_landlock() {
        let gpu = |fs, abi| {
            Plan::new(
                &WorkerArgs {
                    kind: Mode::Gpu,
                    ..args(fs)
                },
                abi,
            )
        };
        let p = gpu(FsMode::Auto, 7).unwrap();
        assert_eq!(
            (p.fs, p.kind, p.limits.nofile),
            (Fs::Landlock { required: false }, Mode::Gpu, 1024)
        );
        assert_eq!(
            gpu(FsMode::Landlock, 5).unwrap().fs,
            Fs::Landlock { required: true }
        );
        let e = gpu(FsMode::Mount, 7).unwrap_err().to_string();
        assert_eq!(
            e,
            "confinement step filesystem: --kind gpu needs Landlock: the mount view has no \
             NVIDIA device nodes (use --fs landlock or --fs auto)"
        );
        let e = gpu(FsMode::Auto, 0).unwrap_err().to_string();
        assert!(
            e.ends_with("this kernel has no Landlock; run the miner with ACCEL_MODE=cpu)"),
            "{e}"
        );
        assert!(gpu(FsMode::Landlock, 0).is_err());
    }

    #[test]
    fn the_report_renders_applied_steps_in_order() {
        let mut r = Report::default();
        let us = Duration::from_micros;
        r.push(Step::Prepare, None, us(10));
        r.push(Step::Namespaces, Some("userns+netns".into()), us(20));
        r.push(Step::Rlimits, Some("rlimits core=0".into()), us(3));
        r.push(Step::NoNewPrivs, Some("no_new_privs".into()), us(1));
        r.push(Step::Capabilities, Some("caps=0".into()), us(4));
        r.push(Step::Filesystem, Some("landlock abi 7".into()), us(50));
        r.push(Step::Device, None, us(0));
        r.push(Step::Seccomp, Some("seccomp cpu".into()), us(30));
        assert_eq!(
            r.line(),
            "userns+netns; rlimits core=0; no_new_privs; caps=0; landlock abi 7; seccomp cpu"
        );
        let steps: Vec<Step> = r.timings().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, Step::ALL);
        assert_eq!(Report::default().line(), "");
    }

    #[test]
    fn steps_are_named_for_error_messages() {
        let names: Vec<String> = Step::ALL.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            names,
            [
                "prepare",
                "namespaces",
                "rlimits",
                "no_new_privs",
                "capabilities",
                "filesystem",
                "device",
                "seccomp"
            ]
        );
        let e = WorkerError::Setup {
            step: Step::Namespaces,
            what: "unshare(CLONE_NEWUSER|CLONE_NEWNET)".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert_eq!(
            e.to_string(),
            "confinement step namespaces: unshare(CLONE_NEWUSER|CLONE_NEWNET): \
             Operation not permitted (os error 1)"
        );
    }
}
