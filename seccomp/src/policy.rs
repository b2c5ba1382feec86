//! The policy as data: for each worker kind, every system call the worker may make after it is
//! confined, narrowed by arguments where it matters, each with its one-line reason.
//!
//! Reading a rule: `allow(SYS_x, "who needs it")` lets the call run; `allow_if(SYS_x, &[conds],
//! ..)` lets it run when every condition holds; `refuse(SYS_x, EPERM, ..)` makes it fail with that
//! errno without running. A call that no rule matches traps: the reporter names it on stderr and
//! the worker dies of SIGSYS. When rules of different actions match, the refusal wins (see
//! `rule::decide`).
//!
//! The Cpu list was derived with `strace -f` of a real worker running `torch_bench` with 1 and 2
//! threads (see README.md). Paths are not this module's business: Landlock (or the read-only
//! mount view) decides which files `openat` can reach. This module must never install anything
//! and never depend on the running process; it only returns data.

use crate::rule::{eq32, eq64, masked32, ne32, ne64, not_own_pid, own_pid, Action, Cond, Rule};
use crate::Profile;
use aitbc_protocol::workload::Workload;

/// The rules of a `profile` worker that serves `workloads`, in the order they are documented:
/// the base list (`Profile::Gpu`'s is the Cpu list plus what the CUDA driver needs), then each
/// workload's fragment ([`crate::fragment`]), once per workload.
pub fn rules(profile: Profile, workloads: &[Workload]) -> Vec<Rule> {
    let mut rules = base(profile);
    let mut seen = Vec::new();
    for &w in workloads {
        if !seen.contains(&w) {
            seen.push(w);
            rules.extend(crate::fragment(w));
        }
    }
    rules
}

/// What every worker of `profile` needs, whatever it computes.
fn base(profile: Profile) -> Vec<Rule> {
    let mut rules = Vec::new();
    io(&mut rules);
    files(&mut rules);
    memory(&mut rules);
    threads(&mut rules);
    signals(&mut rules);
    time_and_misc(&mut rules);
    network(&mut rules);
    if profile == Profile::Gpu {
        gpu(&mut rules);
    }
    rules
}

pub(crate) fn allow_rule(syscall: i64, reason: &'static str) -> Rule {
    Rule {
        syscall,
        when: Vec::new(),
        action: Action::Allow,
        reason,
    }
}

pub(crate) fn allow_if_rule(syscall: i64, when: &[Cond], reason: &'static str) -> Rule {
    Rule {
        syscall,
        when: when.to_vec(),
        action: Action::Allow,
        reason,
    }
}

use allow_if_rule as allow_if;
use allow_rule as allow;

fn refuse(syscall: i64, errno: i32, reason: &'static str) -> Rule {
    Rule {
        syscall,
        when: Vec::new(),
        action: Action::Refuse(errno),
        reason,
    }
}

fn refuse_if(syscall: i64, errno: i32, when: &[Cond], reason: &'static str) -> Rule {
    Rule {
        syscall,
        when: when.to_vec(),
        action: Action::Refuse(errno),
        reason,
    }
}

/// Reading and writing descriptors the worker already holds: its socket (fd 3), stderr, and
/// files it opened in its job directory.
fn io(r: &mut Vec<Rule>) {
    use libc::*;
    r.extend([
        allow(
            SYS_read,
            "read on fd 3 (the job frame) and on job-directory files",
        ),
        allow(
            SYS_write,
            "write the answer on fd 3, diagnostics on stderr, output files",
        ),
        allow(SYS_readv, "vectored read (std's read_vectored on files)"),
        allow(
            SYS_writev,
            "vectored write (std's write_vectored on stderr and files)",
        ),
        allow(SYS_pread64, "positioned read of job-directory files"),
        allow(SYS_pwrite64, "positioned write of job-directory files"),
        allow(SYS_lseek, "seek in job-directory files"),
        allow(SYS_close, "close what it opened"),
        allow(
            SYS_recvfrom,
            "std's UnixStream::read on fd 3 is recv(2), i.e. recvfrom (strace)",
        ),
        allow_if(
            SYS_sendto,
            &[eq64(4, 0)],
            "std's UnixStream::write on fd 3 is send(2): sendto with a null address (strace)",
        ),
        refuse_if(
            SYS_sendto,
            EPERM,
            &[ne64(4, 0)],
            "sendto with a destination address would reach another socket",
        ),
    ]);
}

/// Files. Which paths these reach is Landlock's decision (read-only system paths, read-write
/// job directory), not seccomp's.
fn files(r: &mut Vec<Rule>) {
    use libc::*;
    r.extend([
        allow(
            SYS_openat,
            "open files; Landlock or the read-only mount view limits the paths",
        ),
        allow(SYS_newfstatat, "stat by path or fd (glibc's fstat/stat)"),
        allow(SYS_fstat, "fstat on an open file"),
        allow(SYS_statx, "std's File::metadata and fs::read's size hint"),
        allow(
            SYS_getdents64,
            "list a directory in the job directory (std's fs::read_dir)",
        ),
        allow(
            SYS_unlinkat,
            "remove a file or directory in the job directory",
        ),
        allow(SYS_mkdirat, "create a directory in the job directory"),
        allow(SYS_renameat, "rename within the job directory"),
        allow(
            SYS_renameat2,
            "rename within the job directory (glibc's renameat)",
        ),
        allow(SYS_ftruncate, "resize an output file"),
        allow(SYS_fsync, "make an output file durable"),
        allow(SYS_fdatasync, "make an output file's data durable"),
    ]);
    #[cfg(target_arch = "x86_64")]
    r.extend([
        allow(
            SYS_unlink,
            "x86_64 glibc's unlink(3), i.e. std's fs::remove_file",
        ),
        allow(
            SYS_rmdir,
            "x86_64 glibc's rmdir(3), i.e. std's fs::remove_dir",
        ),
        allow(
            SYS_mkdir,
            "x86_64 glibc's mkdir(3), i.e. std's fs::create_dir",
        ),
        allow(
            SYS_rename,
            "x86_64 glibc's rename(3), i.e. std's fs::rename",
        ),
    ]);
    // fcntl: only descriptor flags. Not F_SETOWN/F_SETSIG (SIGIO to another process), not
    // F_SETLEASE/F_NOTIFY, not locks.
    for (cmd, reason) in [
        (F_GETFD, "fcntl F_GETFD: read close-on-exec"),
        (
            F_SETFD,
            "fcntl F_SETFD: set close-on-exec (std sets it on descriptors)",
        ),
        (
            F_GETFL,
            "fcntl F_GETFL: read status flags (O_NONBLOCK, O_APPEND)",
        ),
        (F_SETFL, "fcntl F_SETFL: set O_NONBLOCK/O_APPEND"),
        (F_DUPFD_CLOEXEC, "fcntl F_DUPFD_CLOEXEC: std's try_clone"),
    ] {
        r.push(allow_if(SYS_fcntl, &[eq32(1, cmd as u64)], reason));
    }
    // ioctl: named requests only, compared on 32 bits (the kernel takes `unsigned int cmd`).
    for (req, reason) in [
        (FIONBIO, "ioctl FIONBIO: std's set_nonblocking"),
        (FIOCLEX, "ioctl FIOCLEX: std's set_cloexec"),
    ] {
        r.push(allow_if(SYS_ioctl, &[eq32(1, req)], reason));
    }
}

/// Memory: the allocator, thread stacks, the chain's matrices and packed buffers.
fn memory(r: &mut Vec<Rule>) {
    use libc::*;
    r.extend([
        allow(SYS_brk, "malloc's main arena"),
        allow(SYS_mmap, "malloc's large blocks and arenas, thread stacks"),
        allow(SYS_munmap, "free large blocks, thread stacks on exit"),
        allow(SYS_mremap, "realloc of large blocks"),
        allow(SYS_mprotect, "thread stack guard pages, arena growth"),
        allow(
            SYS_madvise,
            "glibc frees an exited thread's stack with MADV_DONTNEED",
        ),
    ]);
}

/// Namespace flags a new thread must not carry.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32 as u64;

/// `CLONE_THREAD` as the filter compares it.
const THREAD_FLAG: u64 = libc::CLONE_THREAD as u32 as u64;

/// Threads: rayon's compute pool, std::thread, glibc's pthread machinery.
fn threads(r: &mut Vec<Rule>) {
    use libc::*;
    r.extend([
        allow_if(
            SYS_clone,
            &[masked32(0, THREAD_FLAG | NAMESPACE_FLAGS, THREAD_FLAG)],
            "a new thread (pthread_create after clone3's ENOSYS): CLONE_THREAD, no namespace",
        ),
        refuse_if(
            SYS_clone,
            EPERM,
            &[masked32(0, THREAD_FLAG, 0)],
            "fork-like clone (no CLONE_THREAD): a worker never starts a process",
        ),
        refuse(
            SYS_clone3,
            ENOSYS,
            "its flags sit in memory a filter cannot read: ENOSYS makes glibc fall back to clone",
        ),
        allow(SYS_futex, "locks, condition variables, thread join"),
        allow(
            SYS_set_robust_list,
            "glibc registers each new thread's robust mutex list",
        ),
        allow(
            SYS_rseq,
            "glibc registers each new thread's restartable sequence area",
        ),
        allow(
            SYS_sigaltstack,
            "std's stack-overflow handler stack, per thread",
        ),
        allow(SYS_gettid, "std's thread ids; the SIGSYS reporter's tgkill"),
        allow(SYS_getpid, "the SIGSYS reporter's tgkill; abort()"),
        allow(SYS_exit, "a thread ends"),
        allow(SYS_exit_group, "the worker ends"),
        allow(
            SYS_restart_syscall,
            "the kernel resumes an interrupted sleep or futex wait",
        ),
        allow_if(
            SYS_prctl,
            &[eq32(0, PR_GET_NAME as u64)],
            "read a thread's name",
        ),
    ]);
    #[cfg(target_arch = "x86_64")]
    r.extend([
        refuse(SYS_fork, EPERM, "fork(2): a worker never starts a process"),
        refuse(
            SYS_vfork,
            EPERM,
            "vfork(2): a worker never starts a process",
        ),
    ]);
}

/// Signals: only to itself, and the SIGSYS reporter cannot be replaced.
fn signals(r: &mut Vec<Rule>) {
    use libc::*;
    let sigsys = SIGSYS as u64;
    r.extend([
        allow(
            SYS_rt_sigprocmask,
            "glibc blocks signals around thread creation; the reporter",
        ),
        allow(SYS_rt_sigreturn, "return from any signal handler"),
        allow_if(
            SYS_rt_sigaction,
            &[ne32(0, sigsys)],
            "glibc's and std's handlers (SIGSEGV/SIGBUS overflow, glibc's SIGRT_1)",
        ),
        refuse_if(
            SYS_rt_sigaction,
            EPERM,
            &[eq32(0, sigsys)],
            "SIGSYS belongs to the seccomp reporter; a job may not replace or read it",
        ),
        allow_if(SYS_kill, &[own_pid(0)], "a signal to itself"),
        refuse_if(
            SYS_kill,
            EPERM,
            &[not_own_pid(0)],
            "signals to any other process",
        ),
        allow_if(
            SYS_tgkill,
            &[own_pid(0)],
            "raise(3), abort(3), the reporter: own threads",
        ),
        refuse_if(
            SYS_tgkill,
            EPERM,
            &[not_own_pid(0)],
            "signals to another process's threads",
        ),
        refuse(
            SYS_tkill,
            EPERM,
            "tkill cannot be scoped to the worker's own threads",
        ),
        allow_if(SYS_rt_sigqueueinfo, &[own_pid(0)], "sigqueue(3) to itself"),
        refuse_if(
            SYS_rt_sigqueueinfo,
            EPERM,
            &[not_own_pid(0)],
            "sigqueue to others",
        ),
        allow_if(
            SYS_rt_tgsigqueueinfo,
            &[own_pid(0)],
            "pthread_sigqueue(3) to itself",
        ),
        refuse_if(
            SYS_rt_tgsigqueueinfo,
            EPERM,
            &[not_own_pid(0)],
            "pthread_sigqueue to others",
        ),
        refuse(SYS_pidfd_open, EPERM, "pidfds reach other processes"),
        refuse(SYS_pidfd_send_signal, EPERM, "signals through a pidfd"),
        refuse(
            SYS_pidfd_getfd,
            EPERM,
            "stealing another process's descriptors",
        ),
    ]);
}

/// Clocks, sleeping, randomness.
fn time_and_misc(r: &mut Vec<Rule>) {
    use libc::*;
    r.extend([
        allow(
            SYS_clock_gettime,
            "Instant::now when the vDSO falls back to the kernel",
        ),
        allow(SYS_clock_getres, "clock resolution (vDSO fallback)"),
        allow(
            SYS_gettimeofday,
            "SystemTime::now when the vDSO falls back to the kernel",
        ),
        allow(SYS_nanosleep, "sleep (older glibc)"),
        allow(SYS_clock_nanosleep, "std::thread::sleep"),
        allow(SYS_getrandom, "std's HashMap seeds, the getrandom crate"),
        allow_if(
            SYS_prlimit64,
            &[eq32(0, 0), eq32(1, RLIMIT_CPU as u64)],
            "setrlimit(RLIMIT_CPU) on itself: the job's cpu_time_s, set when the job arrives",
        ),
        allow_if(
            SYS_prlimit64,
            &[eq32(0, 0), eq32(1, RLIMIT_AS as u64)],
            "setrlimit(RLIMIT_AS) on itself: the job's address-space backstop, set when the job arrives",
        ),
    ]);
}

/// The network family: refused with EPERM so a library that tries gets an error, not a kill.
/// The worker's only socket is the inherited fd 3, used with read/write/recvfrom/sendto above.
fn network(r: &mut Vec<Rule>) {
    use libc::*;
    r.extend([
        refuse(
            SYS_socket,
            EPERM,
            "no new sockets of any family (the worker has no network)",
        ),
        refuse(SYS_socketpair, EPERM, "no new sockets"),
        refuse(SYS_connect, EPERM, "no connections"),
        refuse(SYS_bind, EPERM, "no listening addresses"),
        refuse(SYS_listen, EPERM, "no listening sockets"),
        refuse(SYS_accept, EPERM, "no incoming connections"),
        refuse(SYS_accept4, EPERM, "no incoming connections"),
        refuse(
            SYS_sendmsg,
            EPERM,
            "not used on fd 3 (strace); could pass descriptors",
        ),
        refuse(
            SYS_recvmsg,
            EPERM,
            "not used on fd 3 (strace); could receive descriptors",
        ),
        refuse(SYS_sendmmsg, EPERM, "not used; batch sends"),
        refuse(SYS_recvmmsg, EPERM, "not used; batch receives"),
        refuse(SYS_getsockopt, EPERM, "not used after confinement"),
        refuse(SYS_setsockopt, EPERM, "not used after confinement"),
        refuse(SYS_getsockname, EPERM, "not used after confinement"),
        refuse(SYS_getpeername, EPERM, "not used after confinement"),
        refuse(
            SYS_shutdown,
            EPERM,
            "not used: the worker closes fd 3 by exiting",
        ),
    ]);
}

/// NVIDIA frontend ioctls (`/dev/nvidiactl`, `/dev/nvidiaN`): `_IOC(dir, 'F', nr, size)`. The
/// parameter size differs between driver versions, so only type and number are compared
/// (`cmd & 0xffff`). Numbers from open-gpu-kernel-modules: nv-ioctl-numbers.h (200 + n) and
/// nv_escape.h (the RM escapes).
const NV_FRONTEND: &[(u64, &str)] = &[
    (200, "NV_ESC_CARD_INFO: list the GPUs"),
    (201, "NV_ESC_REGISTER_FD: tie a device fd to the control fd"),
    (206, "NV_ESC_ALLOC_OS_EVENT: completion events"),
    (207, "NV_ESC_FREE_OS_EVENT: completion events"),
    (209, "NV_ESC_STATUS_CODE: driver status of a GPU"),
    (
        210,
        "NV_ESC_CHECK_VERSION_STR: libcuda/driver version handshake",
    ),
    (
        211,
        "NV_ESC_IOCTL_XFER_CMD: carries RM escapes whose parameters exceed 16 KiB",
    ),
    (
        212,
        "NV_ESC_ATTACH_GPUS_TO_FD: attach GPUs to the control fd",
    ),
    (213, "NV_ESC_QUERY_DEVICE_INTR: interrupt status"),
    (214, "NV_ESC_SYS_PARAMS: system parameters"),
    (215, "NV_ESC_NUMA_INFO: NUMA placement of device memory"),
    (
        218,
        "NV_ESC_WAIT_OPEN_COMPLETE: wait for the device open to finish (recent drivers)",
    ),
    (0x27, "NV_ESC_RM_ALLOC_MEMORY: allocate memory"),
    (0x28, "NV_ESC_RM_ALLOC_OBJECT: allocate an RM object"),
    (0x29, "NV_ESC_RM_FREE: free an RM object"),
    (
        0x2a,
        "NV_ESC_RM_CONTROL: RM control calls (queries, configuration)",
    ),
    (
        0x2b,
        "NV_ESC_RM_ALLOC: allocate an RM object (contexts, channels)",
    ),
    (0x34, "NV_ESC_RM_DUP_OBJECT: duplicate an object handle"),
    (0x35, "NV_ESC_RM_SHARE: share an object between clients"),
    (0x41, "NV_ESC_RM_IDLE_CHANNELS: idle channels"),
    (0x4a, "NV_ESC_RM_VID_HEAP_CONTROL: device memory heap"),
    (0x4e, "NV_ESC_RM_MAP_MEMORY: map device memory for the CPU"),
    (0x4f, "NV_ESC_RM_UNMAP_MEMORY: unmap device memory"),
    (0x52, "NV_ESC_RM_GET_EVENT_DATA: read event data"),
    (0x54, "NV_ESC_RM_ALLOC_CONTEXT_DMA2: DMA contexts"),
    (
        0x57,
        "NV_ESC_RM_MAP_MEMORY_DMA: map memory into a GPU address space",
    ),
    (
        0x58,
        "NV_ESC_RM_UNMAP_MEMORY_DMA: unmap memory from a GPU address space",
    ),
    (0x59, "NV_ESC_RM_BIND_CONTEXT_DMA: bind a DMA context"),
    (
        0x5c,
        "NV_ESC_RM_EXPORT_OBJECT_TO_FD: export an object to an fd",
    ),
    (
        0x5d,
        "NV_ESC_RM_IMPORT_OBJECT_FROM_FD: import an object from an fd",
    ),
    (
        0x5e,
        "NV_ESC_RM_UPDATE_DEVICE_MAPPING_INFO: update a CPU mapping",
    ),
];

/// The `'F'` ioctl type in place.
const NV_IOCTL_TYPE: u64 = (b'F' as u64) << 8;

/// UVM ioctls (`/dev/nvidia-uvm`): plain numbers, compared whole on 32 bits. From
/// open-gpu-kernel-modules: uvm_ioctl.h and uvm_linux_ioctl.h. Left out on purpose: the tools
/// ioctls (reading and writing process memory, counters, event queues), UVM_DEBUG_ACCESS_MEMORY,
/// UVM_RUN_TEST, the MPS registrations.
const UVM: &[(u64, &str)] = &[
    (0x3000_0001, "UVM_INITIALIZE: open the UVM address space"),
    (0x3000_0002, "UVM_DEINITIALIZE: close it"),
    (1, "UVM_RESERVE_VA"),
    (2, "UVM_RELEASE_VA"),
    (3, "UVM_REGION_COMMIT"),
    (4, "UVM_REGION_DECOMMIT"),
    (5, "UVM_REGION_SET_STREAM"),
    (6, "UVM_SET_STREAM_RUNNING"),
    (7, "UVM_SET_STREAM_STOPPED"),
    (20, "UVM_GET_GPU_UUID_TABLE"),
    (23, "UVM_CREATE_RANGE_GROUP"),
    (24, "UVM_DESTROY_RANGE_GROUP"),
    (
        25,
        "UVM_REGISTER_GPU_VASPACE: the context's GPU address space",
    ),
    (26, "UVM_UNREGISTER_GPU_VASPACE"),
    (27, "UVM_REGISTER_CHANNEL: the context's channels"),
    (28, "UVM_UNREGISTER_CHANNEL"),
    (29, "UVM_ENABLE_PEER_ACCESS"),
    (30, "UVM_DISABLE_PEER_ACCESS"),
    (31, "UVM_SET_RANGE_GROUP"),
    (33, "UVM_MAP_EXTERNAL_ALLOCATION: map cuMemAlloc memory"),
    (34, "UVM_FREE"),
    (35, "UVM_MEM_MAP"),
    (37, "UVM_REGISTER_GPU: attach the GPU at context creation"),
    (38, "UVM_UNREGISTER_GPU"),
    (39, "UVM_PAGEABLE_MEM_ACCESS: capability query"),
    (40, "UVM_PREVENT_MIGRATION_RANGE_GROUPS"),
    (41, "UVM_ALLOW_MIGRATION_RANGE_GROUPS"),
    (42, "UVM_SET_PREFERRED_LOCATION"),
    (43, "UVM_UNSET_PREFERRED_LOCATION"),
    (44, "UVM_ENABLE_READ_DUPLICATION"),
    (45, "UVM_DISABLE_READ_DUPLICATION"),
    (46, "UVM_SET_ACCESSED_BY"),
    (47, "UVM_UNSET_ACCESSED_BY"),
    (51, "UVM_MIGRATE: managed memory migration"),
    (53, "UVM_MIGRATE_RANGE_GROUP"),
    (54, "UVM_ENABLE_SYSTEM_WIDE_ATOMICS"),
    (55, "UVM_DISABLE_SYSTEM_WIDE_ATOMICS"),
    (65, "UVM_MAP_DYNAMIC_PARALLELISM_REGION"),
    (66, "UVM_UNMAP_EXTERNAL"),
    (68, "UVM_ALLOC_SEMAPHORE_POOL: the context's semaphores"),
    (69, "UVM_CLEAN_UP_ZOMBIE_RESOURCES"),
    (70, "UVM_PAGEABLE_MEM_ACCESS_ON_GPU: capability query"),
    (71, "UVM_POPULATE_PAGEABLE"),
    (72, "UVM_VALIDATE_VA_RANGE"),
    (73, "UVM_CREATE_EXTERNAL_RANGE"),
    (74, "UVM_MAP_EXTERNAL_SPARSE"),
    (75, "UVM_MM_INITIALIZE (recent drivers)"),
    (2047, "UVM_IS_8_SUPPORTED: version query"),
];

/// What the CUDA driver (libcuda) needs after the context exists: the device ioctls above, its
/// helper threads' event loop, and read-only queries. Written from public sources, **not yet
/// verified on a GPU** (see README.md).
fn gpu(r: &mut Vec<Rule>) {
    use libc::*;
    for &(nr, reason) in NV_FRONTEND {
        r.push(allow_if(
            SYS_ioctl,
            &[masked32(1, 0xffff, NV_IOCTL_TYPE | nr)],
            reason,
        ));
    }
    for &(nr, reason) in UVM {
        r.push(allow_if(SYS_ioctl, &[eq32(1, nr)], reason));
    }
    r.extend([
        allow(SYS_ppoll, "libcuda's helper threads wait on event fds"),
        allow(SYS_epoll_create1, "libcuda's helper threads' event loop"),
        allow(SYS_epoll_ctl, "libcuda's helper threads' event loop"),
        allow(SYS_epoll_pwait, "libcuda's helper threads' event loop"),
        allow(SYS_eventfd2, "libcuda's thread wake-ups"),
        allow(SYS_pipe2, "libcuda's thread wake-ups"),
        allow(SYS_memfd_create, "libcuda's shareable host allocations"),
        allow(SYS_dup, "libcuda duplicates device fds"),
        allow(SYS_dup3, "libcuda duplicates device fds"),
        allow(
            SYS_readlinkat,
            "libcuda resolves paths (Landlock limits which)",
        ),
        allow(SYS_faccessat, "libcuda checks device nodes exist"),
        allow(
            SYS_faccessat2,
            "libcuda checks device nodes exist (newer glibc)",
        ),
        allow(SYS_uname, "libcuda checks the kernel version"),
        allow(SYS_sysinfo, "libcuda reads total memory"),
        allow(SYS_getrlimit, "libcuda reads its limits"),
        allow(SYS_getuid, "libcuda reads its credentials"),
        allow(SYS_geteuid, "libcuda reads its credentials"),
        allow(SYS_getgid, "libcuda reads its credentials"),
        allow(SYS_getegid, "libcuda reads its credentials"),
        allow(SYS_get_mempolicy, "UVM reads the NUMA policy"),
        allow_if(
            SYS_prlimit64,
            &[eq32(0, 0), eq64(2, 0)],
            "read its own limits (new_limit NULL)",
        ),
        allow_if(
            SYS_prlimit64,
            &[own_pid(0), eq64(2, 0)],
            "read its own limits by pid (new_limit NULL)",
        ),
        allow_if(
            SYS_sched_setaffinity,
            &[eq32(0, 0)],
            "libcuda may pin its own threads (pid 0 only)",
        ),
    ]);
    #[cfg(target_arch = "x86_64")]
    r.extend([
        allow(
            SYS_poll,
            "libcuda's helper threads wait on event fds (x86_64 glibc)",
        ),
        allow(SYS_epoll_wait, "libcuda's event loop (x86_64 glibc)"),
        allow(SYS_readlink, "libcuda resolves paths (x86_64 glibc)"),
        allow(
            SYS_access,
            "libcuda checks device nodes exist (x86_64 glibc)",
        ),
    ]);
}

#[cfg(test)]
mod tests {
    use super::{base, rules};
    use crate::rule::{decide, Action, Cmp, Cond, Rule, Value, Verdict, Width};
    use crate::{compile, syscall_name, Context, Profile};
    use aitbc_protocol::workload::Workload;

    const BOTH: [Profile; 2] = [Profile::Cpu, Profile::Gpu];
    const CX: Context = Context { pid: 4242 };

    fn args(a: &[u64]) -> [u64; 6] {
        let mut out = [0; 6];
        out[..a.len()].copy_from_slice(a);
        out
    }

    fn verdict(p: Profile, nr: i64, a: &[u64]) -> Verdict {
        decide(&rules(p, &Workload::ALL), nr, &args(a), &CX)
    }

    #[test]
    fn both_profiles_compile_into_refusal_filters_then_the_allow_list() {
        for p in BOTH {
            let programs = compile(p, &Workload::ALL, &CX).unwrap();
            // EPERM, ENOSYS, allow-list.
            assert_eq!(programs.len(), 3, "{p:?}");
            // The kernel caps a filter at BPF_MAXINSNS (4096) instructions.
            for prog in &programs {
                assert!(
                    !prog.is_empty() && prog.len() <= 4096,
                    "{p:?}: {}",
                    prog.len()
                );
            }
        }
    }

    #[test]
    fn every_rule_has_a_reason_a_name_and_valid_arguments() {
        for p in BOTH {
            for rule in rules(p, &Workload::ALL) {
                assert!(!rule.reason.trim().is_empty(), "{p:?}: {rule}");
                assert!(!rule.reason.contains('\n'), "one line: {rule}");
                assert!(
                    syscall_name(rule.syscall).is_some(),
                    "{p:?}: unnamed {rule}"
                );
                assert!(rule.when.iter().all(|c| c.arg <= 5), "{rule}");
            }
        }
    }

    /// An argument vector that satisfies every condition of `rule` (None when they conflict).
    fn witness(rule: &Rule) -> Option<[u64; 6]> {
        let mut a = [0u64; 6];
        for c in &rule.when {
            let v = c.value.resolve(&CX);
            let slot = &mut a[usize::from(c.arg)];
            match c.cmp {
                Cmp::Eq => *slot = v,
                Cmp::Ne => *slot = v.wrapping_add(1),
                Cmp::MaskedEq(mask) => *slot = (*slot & !mask) | (v & mask),
            }
        }
        rule.matches(&a, &CX).then_some(a)
    }

    #[test]
    fn no_system_call_has_contradicting_rules() {
        for p in BOTH {
            let all = rules(p, &Workload::ALL);
            for (i, a) in all.iter().enumerate() {
                for b in &all[i + 1..] {
                    if a.syscall != b.syscall {
                        continue;
                    }
                    assert!(
                        a.when != b.when,
                        "{p:?}: {} listed twice with the same conditions:\n  {a}\n  {b}",
                        a.name()
                    );
                    if a.action == b.action {
                        continue;
                    }
                    // Different actions must never both match one call.
                    for (x, y) in [(a, b), (b, a)] {
                        if let Some(w) = witness(x) {
                            assert!(
                                !y.matches(&w, &CX),
                                "{p:?}: {} {w:x?} matches both\n  {x}\n  {y}",
                                x.name()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn threads_yes_processes_no() {
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        let fork = (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;
        for p in BOTH {
            assert_eq!(verdict(p, libc::SYS_clone, &[thread]), Verdict::Allow);
            assert_eq!(
                verdict(p, libc::SYS_clone, &[fork]),
                Verdict::Errno(libc::EPERM)
            );
            let userns = thread | libc::CLONE_NEWUSER as u64;
            assert_eq!(verdict(p, libc::SYS_clone, &[userns]), Verdict::Trap);
            assert_eq!(
                verdict(p, libc::SYS_clone3, &[]),
                Verdict::Errno(libc::ENOSYS)
            );
        }
    }

    #[test]
    fn signals_only_to_itself_and_sigsys_is_the_reporters() {
        let own = u64::from(CX.pid);
        let p = Profile::Cpu;
        assert_eq!(verdict(p, libc::SYS_kill, &[own, 0]), Verdict::Allow);
        // Garbage in the upper half of an int argument is ignored, as the kernel does.
        assert_eq!(
            verdict(p, libc::SYS_kill, &[own | 1 << 40, 0]),
            Verdict::Allow
        );
        assert_eq!(
            verdict(p, libc::SYS_kill, &[1, 9]),
            Verdict::Errno(libc::EPERM)
        );
        assert_eq!(
            verdict(p, libc::SYS_kill, &[u64::MAX, 9]),
            Verdict::Errno(libc::EPERM)
        );
        assert_eq!(verdict(p, libc::SYS_tgkill, &[own, own, 6]), Verdict::Allow);
        assert_eq!(
            verdict(p, libc::SYS_tgkill, &[1, 1, 9]),
            Verdict::Errno(libc::EPERM)
        );
        assert_eq!(
            verdict(p, libc::SYS_tkill, &[own, 9]),
            Verdict::Errno(libc::EPERM)
        );
        let sigsys = libc::SIGSYS as u64;
        let sigsegv = libc::SIGSEGV as u64;
        assert_eq!(
            verdict(p, libc::SYS_rt_sigaction, &[sigsegv]),
            Verdict::Allow
        );
        let refused = Verdict::Errno(libc::EPERM);
        assert_eq!(verdict(p, libc::SYS_rt_sigaction, &[sigsys]), refused);
        assert_eq!(verdict(p, libc::SYS_pidfd_open, &[1, 0]), refused);
    }

    #[test]
    fn ioctl_requests_compare_on_32_bits() {
        let fionbio = libc::FIONBIO;
        for p in BOTH {
            assert_eq!(verdict(p, libc::SYS_ioctl, &[3, fionbio]), Verdict::Allow);
            let garbage = 0xdead_beef_0000_0000 | fionbio;
            assert_eq!(verdict(p, libc::SYS_ioctl, &[3, garbage]), Verdict::Allow);
            assert_eq!(
                verdict(p, libc::SYS_ioctl, &[3, libc::TCGETS]),
                Verdict::Trap
            );
            assert_eq!(
                verdict(p, libc::SYS_ioctl, &[0, libc::TIOCSTI]),
                Verdict::Trap
            );
        }
        // NV_ESC_RM_CONTROL as _IOWR('F', 0x2a, 32): only the Gpu profile, any size.
        let rm_control = (3u64 << 30) | (32 << 16) | (u64::from(b'F') << 8) | 0x2a;
        assert_eq!(
            verdict(Profile::Cpu, libc::SYS_ioctl, &[5, rm_control]),
            Verdict::Trap
        );
        assert_eq!(
            verdict(Profile::Gpu, libc::SYS_ioctl, &[5, rm_control]),
            Verdict::Allow
        );
        let other_size = (3u64 << 30) | (48 << 16) | (u64::from(b'F') << 8) | 0x2a;
        assert_eq!(
            verdict(Profile::Gpu, libc::SYS_ioctl, &[5, other_size]),
            Verdict::Allow
        );
        let uvm_init = 0x3000_0001;
        assert_eq!(
            verdict(Profile::Gpu, libc::SYS_ioctl, &[6, uvm_init]),
            Verdict::Allow
        );
        // UVM_TOOLS_READ_PROCESS_MEMORY is left out on purpose.
        assert_eq!(
            verdict(Profile::Gpu, libc::SYS_ioctl, &[6, 62]),
            Verdict::Trap
        );
    }

    #[test]
    fn network_is_refused_and_the_socket_is_used_only_without_addresses() {
        for p in BOTH {
            let inet = libc::AF_INET as u64;
            let unix = libc::AF_UNIX as u64;
            let refused = Verdict::Errno(libc::EPERM);
            assert_eq!(verdict(p, libc::SYS_socket, &[inet, 1, 0]), refused);
            assert_eq!(verdict(p, libc::SYS_socket, &[unix, 1, 0]), refused);
            assert_eq!(verdict(p, libc::SYS_connect, &[3]), refused);
            let msg_nosignal = libc::MSG_NOSIGNAL as u64;
            let send = [3, 0x1000, 10, msg_nosignal, 0, 0];
            assert_eq!(verdict(p, libc::SYS_sendto, &send), Verdict::Allow);
            let send_to = [3, 0x1000, 10, msg_nosignal, 0x2000, 16];
            assert_eq!(verdict(p, libc::SYS_sendto, &send_to), refused);
        }
    }

    #[test]
    fn the_dangerous_calls_trap() {
        let dangerous = vec![
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_keyctl,
            libc::SYS_init_module,
            libc::SYS_kexec_load,
            libc::SYS_reboot,
            libc::SYS_swapon,
            libc::SYS_setns,
            libc::SYS_unshare,
            libc::SYS_chroot,
            libc::SYS_pivot_root,
            libc::SYS_open_by_handle_at,
            libc::SYS_userfaultfd,
            libc::SYS_io_uring_setup,
            libc::SYS_seccomp,
            libc::SYS_setuid,
            libc::SYS_capset,
            libc::SYS_symlinkat,
            libc::SYS_linkat,
            libc::SYS_fchmodat,
            libc::SYS_fchownat,
        ];
        #[cfg(target_arch = "x86_64")]
        let dangerous = {
            let mut d = dangerous;
            d.extend([libc::SYS_open, libc::SYS_symlink, libc::SYS_chmod]);
            d
        };
        for p in BOTH {
            for &nr in &dangerous {
                assert_eq!(
                    verdict(p, nr, &[0; 6]),
                    Verdict::Trap,
                    "{p:?}: {:?}",
                    syscall_name(nr)
                );
            }
        }
    }

    #[test]
    fn gpu_is_cpu_plus_more() {
        let cpu = base(Profile::Cpu);
        let gpu = base(Profile::Gpu);
        assert!(gpu.len() > cpu.len());
        assert_eq!(&gpu[..cpu.len()], &cpu[..]);
        // The additions only ever allow.
        assert!(gpu[cpu.len()..].iter().all(|r| r.action == Action::Allow));
    }

    #[test]
    fn own_pid_is_filled_in_at_compile_time() {
        let c = Cond {
            arg: 0,
            width: Width::Dword,
            cmp: Cmp::Eq,
            value: Value::OwnPid,
        };
        assert!(c.holds(&args(&[4242]), &CX));
        assert!(!c.holds(&args(&[4243]), &CX));
    }

    #[test]
    fn a_fragment_is_the_workloads_own_and_only_allows() {
        for w in Workload::ALL {
            for rule in crate::fragment(w) {
                assert_eq!(rule.action, Action::Allow, "{}: {rule}", w.as_str());
                assert!(
                    rule.reason.starts_with(&format!("{}: ", w.as_str())),
                    "a fragment rule names its workload: {rule}"
                );
            }
        }
        // torch_bench's fragment is what lets its compute pool run: without it, a yield traps.
        for p in BOTH {
            let yield_ =
                |w: &[Workload]| decide(&rules(p, w), libc::SYS_sched_yield, &args(&[]), &CX);
            assert_eq!(yield_(&[]), Verdict::Trap, "{p:?}");
            assert_eq!(yield_(&[Workload::TorchBench]), Verdict::Allow, "{p:?}");
            // Each fragment is added once, however often its workload is named.
            assert_eq!(
                rules(p, &[Workload::TorchBench, Workload::TorchBench]).len(),
                rules(p, &[Workload::TorchBench]).len()
            );
        }
    }
}
