//! The SIGSYS reporter: when the filter traps a call, name it on stderr, then let the process die
//! *of SIGSYS* so the supervisor sees both the signal and the name.
//!
//! The handler runs in whatever state the trapped thread was in, so it must never allocate, take
//! a lock, panic, or make a system call the policy does not allow (it uses write, rt_sigprocmask,
//! getpid, gettid and tgkill to its own pid, all allowed). It is installed with
//! SA_SIGINFO | SA_NODEFER | SA_RESETHAND: the first trap resets SIGSYS to its default action, so
//! the re-raised signal kills the process; the filter refuses `rt_sigaction(SIGSYS)` so a job
//! cannot put its own handler in its place.

use std::io;

use crate::SeccompError;

/// The first part of the report line, `{PREFIX}{name} ({nr})\n`; the supervisor looks for it in
/// the worker's stderr tail. Defined once, in the protocol crate.
pub use aitbc_protocol::wire::SECCOMP_REPORT_PREFIX as REPORT_PREFIX;

/// Offset of `si_syscall` (an `int`) in `siginfo_t` for SIGSYS on 64-bit Linux: `si_signo`,
/// `si_errno`, `si_code` (3 × 4 bytes), padding to 16, then `_sifields._sigsys`:
/// `void *_call_addr` (16..24), `int _syscall` (24..28), `unsigned int _arch` (28..32).
const SI_SYSCALL_OFFSET: usize = 24;

/// Installs the reporter as the process-wide SIGSYS handler.
pub(crate) fn install_reporter() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; we then fill the
    // handler and flags. `on_sigsys` has the SA_SIGINFO signature and is async-signal-safe.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_RESETHAND;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(SeccompError::Reporter(io::Error::last_os_error()));
    }
    Ok(())
}

/// The SIGSYS handler (see the module doc for what it may and may not do).
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler; for SIGSYS the
        // `int` at SI_SYSCALL_OFFSET is the trapped system call's number.
        unsafe {
            info.cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<i32>()
                .read_unaligned()
        }
    };
    let mut line = Line::new();
    line.push(REPORT_PREFIX.as_bytes());
    line.push(
        crate::syscall_name(i64::from(nr))
            .unwrap_or("unknown")
            .as_bytes(),
    );
    line.push(b" (");
    line.push_int(i64::from(nr));
    line.push(b")\n");
    // SAFETY: plain system calls on valid local memory; all of them are allowed by every
    // profile, so none traps again.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSYS);
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_UNBLOCK,
            &set as *const libc::sigset_t,
            std::ptr::null_mut::<libc::sigset_t>(),
            8usize,
        );
        let pid = libc::getpid();
        let tid = libc::syscall(libc::SYS_gettid);
        libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGSYS);
        // SA_RESETHAND made SIGSYS's action the default, so the signal above ends the process
        // on the way out of tgkill. Should it not, end anyway with the shell's convention.
        libc::syscall(libc::SYS_exit_group, 128 + libc::SIGSYS);
    }
}

/// A fixed-size line built without allocating; what does not fit is cut.
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line {
            buf: [0; 160],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    fn push_int(&mut self, n: i64) {
        if n < 0 {
            self.push(b"-");
        }
        let mut v = n.unsigned_abs();
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 || i == 0 {
                break;
            }
        }
        let (_, used) = digits.split_at(i);
        self.push(used);
    }
}

#[cfg(test)]
mod tests {
    use super::{Line, REPORT_PREFIX};

    #[test]
    fn line_formats_numbers_without_allocating() {
        for (n, text) in [
            (0, "0"),
            (59, "59"),
            (-1, "-1"),
            (i64::MIN, "-9223372036854775808"),
        ] {
            let mut line = Line::new();
            line.push_int(n);
            assert_eq!(&line.buf[..line.len], text.as_bytes());
        }
    }

    #[test]
    fn line_cuts_what_does_not_fit() {
        let mut line = Line::new();
        line.push(&[b'x'; 200]);
        assert_eq!(line.len, 160);
    }

    #[test]
    fn prefix_is_the_pinned_literal() {
        assert_eq!(
            REPORT_PREFIX,
            "aitbc-worker: seccomp: forbidden system call "
        );
    }
}
