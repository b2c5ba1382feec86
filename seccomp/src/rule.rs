//! The vocabulary of the policy: a `Rule` (system call, argument conditions, action, reason) and
//! `decide`, the pure reading of a rule list that the compiled BPF must agree with.
//!
//! This module only describes and evaluates rules; it must never touch the process (no system
//! calls, no filters installed).

use std::fmt;

use crate::Context;

/// What the filter answers when a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// The call runs.
    Allow,
    /// The call does not run and fails with this errno (`libc::EPERM`, `libc::ENOSYS`): refused
    /// on purpose, so libraries that probe (open a socket, try clone3) get an error, not a kill.
    Refuse(i32),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Allow => f.write_str("allow"),
            Action::Refuse(libc::EPERM) => f.write_str("refuse EPERM"),
            Action::Refuse(libc::ENOSYS) => f.write_str("refuse ENOSYS"),
            Action::Refuse(errno) => write!(f, "refuse errno {errno}"),
        }
    }
}

/// The outcome of one system call under a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The call runs.
    Allow,
    /// The call fails with this errno.
    Errno(i32),
    /// The thread gets SIGSYS: the reporter names the call and the process dies of SIGSYS.
    Trap,
}

/// How many bits of an argument a condition compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Width {
    /// The low 32 bits only: for `int`/`unsigned int` arguments (pids, signals, ioctl requests,
    /// fcntl commands), whose upper half the kernel ignores and a caller may fill with garbage.
    Dword,
    /// All 64 bits: for pointers and `unsigned long` arguments.
    Qword,
}

/// The comparison a condition makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cmp {
    /// `arg == value`.
    Eq,
    /// `arg != value`.
    Ne,
    /// `arg & mask == value`.
    MaskedEq(u64),
}

/// The value a condition compares with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    /// A constant of the policy.
    Const(u64),
    /// The worker's own pid (`Context::pid`), known only when the filter is compiled.
    OwnPid,
}

impl Value {
    /// The number this value stands for in context `cx`.
    pub fn resolve(self, cx: &Context) -> u64 {
        match self {
            Value::Const(v) => v,
            Value::OwnPid => u64::from(cx.pid),
        }
    }
}

/// One test on one argument of a system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cond {
    /// Argument index, 0 to 5.
    pub arg: u8,
    /// How many bits are compared.
    pub width: Width,
    /// The comparison.
    pub cmp: Cmp,
    /// The value compared with.
    pub value: Value,
}

impl Cond {
    /// Whether this condition holds for the argument vector `args` in context `cx`.
    pub fn holds(&self, args: &[u64; 6], cx: &Context) -> bool {
        let Some(&raw) = args.get(usize::from(self.arg)) else {
            return false;
        };
        let (arg, value) = match self.width {
            Width::Dword => (raw & 0xffff_ffff, self.value.resolve(cx) & 0xffff_ffff),
            Width::Qword => (raw, self.value.resolve(cx)),
        };
        match self.cmp {
            Cmp::Eq => arg == value,
            Cmp::Ne => arg != value,
            Cmp::MaskedEq(mask) => arg & mask == value & mask,
        }
    }
}

impl fmt::Display for Cond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = match self.width {
            Width::Dword => "u32",
            Width::Qword => "u64",
        };
        let value = match self.value {
            Value::Const(v) => format!("{v:#x}"),
            Value::OwnPid => "own pid".to_string(),
        };
        match self.cmp {
            Cmp::Eq => write!(f, "arg{} as {width} == {value}", self.arg),
            Cmp::Ne => write!(f, "arg{} as {width} != {value}", self.arg),
            Cmp::MaskedEq(mask) => {
                write!(f, "arg{} as {width} & {mask:#x} == {value}", self.arg)
            }
        }
    }
}

/// One line of the policy: a system call, the conditions on its arguments (all must hold; none
/// means always), what the filter answers, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The system-call number on the target architecture (`libc::SYS_*`).
    pub syscall: i64,
    /// Conditions that must all hold for the rule to match; empty: it always matches.
    pub when: Vec<Cond>,
    /// What the filter answers when the rule matches.
    pub action: Action,
    /// Who needs this, or why it is refused: one line.
    pub reason: &'static str,
}

impl Rule {
    /// The system call's name (`"openat"`), or `"?"` for a number the name table lacks.
    pub fn name(&self) -> &'static str {
        crate::syscall_name(self.syscall).unwrap_or("?")
    }

    /// Whether the rule matches a call with arguments `args` in context `cx`.
    pub fn matches(&self, args: &[u64; 6], cx: &Context) -> bool {
        self.when.iter().all(|c| c.holds(args, cx))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.action, self.name())?;
        for (i, c) in self.when.iter().enumerate() {
            f.write_str(if i == 0 { " if " } else { " and " })?;
            write!(f, "{c}")?;
        }
        write!(f, "  # {}", self.reason)
    }
}

/// What `rules` answer for system call `nr` with arguments `args`: the most restrictive action
/// among the matching rules (a refusal beats an allow, as the kernel combines several filters),
/// and `Trap` when no rule matches. The compiled BPF implements exactly this.
pub fn decide(rules: &[Rule], nr: i64, args: &[u64; 6], cx: &Context) -> Verdict {
    let mut verdict = Verdict::Trap;
    for rule in rules
        .iter()
        .filter(|r| r.syscall == nr && r.matches(args, cx))
    {
        verdict = match (verdict, rule.action) {
            (Verdict::Errno(e), _) => Verdict::Errno(e),
            (_, Action::Refuse(e)) => Verdict::Errno(e),
            (_, Action::Allow) => Verdict::Allow,
        };
    }
    verdict
}

// Short constructors, so that `policy.rs` reads as a table.

/// `arg as u32 == value`.
pub(crate) const fn eq32(arg: u8, value: u64) -> Cond {
    Cond {
        arg,
        width: Width::Dword,
        cmp: Cmp::Eq,
        value: Value::Const(value),
    }
}

/// `arg as u32 != value`.
pub(crate) const fn ne32(arg: u8, value: u64) -> Cond {
    Cond {
        arg,
        width: Width::Dword,
        cmp: Cmp::Ne,
        value: Value::Const(value),
    }
}

/// `arg as u32 & mask == value`.
pub(crate) const fn masked32(arg: u8, mask: u64, value: u64) -> Cond {
    Cond {
        arg,
        width: Width::Dword,
        cmp: Cmp::MaskedEq(mask),
        value: Value::Const(value),
    }
}

/// `arg == value` on all 64 bits (pointers).
pub(crate) const fn eq64(arg: u8, value: u64) -> Cond {
    Cond {
        arg,
        width: Width::Qword,
        cmp: Cmp::Eq,
        value: Value::Const(value),
    }
}

/// `arg != value` on all 64 bits (pointers).
pub(crate) const fn ne64(arg: u8, value: u64) -> Cond {
    Cond {
        arg,
        width: Width::Qword,
        cmp: Cmp::Ne,
        value: Value::Const(value),
    }
}

/// `arg as u32 == the worker's own pid`.
pub(crate) const fn own_pid(arg: u8) -> Cond {
    Cond {
        arg,
        width: Width::Dword,
        cmp: Cmp::Eq,
        value: Value::OwnPid,
    }
}

/// `arg as u32 != the worker's own pid`.
pub(crate) const fn not_own_pid(arg: u8) -> Cond {
    Cond {
        arg,
        width: Width::Dword,
        cmp: Cmp::Ne,
        value: Value::OwnPid,
    }
}
