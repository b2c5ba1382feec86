//! Turns a rule list into seccompiler BPF programs for the target architecture.
//!
//! One seccompiler filter has one match action, so a policy becomes several filters, and the
//! kernel runs all of them and keeps the most restrictive answer (TRAP > ERRNO > ALLOW):
//!
//! * one **refusal filter per errno** (`refuse EPERM`, `refuse ENOSYS`): the rules with that
//!   errno match → that errno; anything else → allow (it defers to the allow-list);
//! * the **allow-list** last: every rule of the policy (allow *and* refusal rules, so a refused
//!   call is not also trapped) matches → allow; anything else → trap.
//!
//! The result is exactly `rule::decide`. The order of the returned programs is the order to
//! install them in: the allow-list does not allow `seccomp(2)` itself, so it must come last.
//! This module must never install anything.

use std::collections::{BTreeMap, BTreeSet};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::rule::{Action, Cmp, Rule, Width};
use crate::{Context, SeccompError};

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("aitbc-seccomp supports x86_64 and aarch64 only");

/// A compiled filter and the name errors and reports use for it.
pub(crate) struct Named {
    pub(crate) name: String,
    pub(crate) program: BpfProgram,
}

/// Compiles `rules` for context `cx`: the refusal filters first (one per errno, in errno
/// order), the allow-list last.
pub(crate) fn compile_rules(rules: &[Rule], cx: &Context) -> Result<Vec<Named>, SeccompError> {
    let errnos: BTreeSet<i32> = rules
        .iter()
        .filter_map(|r| match r.action {
            Action::Refuse(e) => Some(e),
            Action::Allow => None,
        })
        .collect();
    let mut out = Vec::with_capacity(errnos.len() + 1);
    for errno in errnos {
        let name = Action::Refuse(errno).to_string();
        let subset: Vec<&Rule> = rules
            .iter()
            .filter(|r| r.action == Action::Refuse(errno))
            .collect();
        let program = filter(
            &name,
            &subset,
            cx,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
        )?;
        out.push(Named { name, program });
    }
    let all: Vec<&Rule> = rules.iter().collect();
    let name = "allow-list".to_string();
    let program = filter(&name, &all, cx, SeccompAction::Trap, SeccompAction::Allow)?;
    out.push(Named { name, program });
    Ok(out)
}

/// One seccompiler filter: a call matching any of `rules` gets `on_match`, anything else
/// `on_mismatch`. A rule without conditions makes its system call match unconditionally.
fn filter(
    name: &str,
    rules: &[&Rule],
    cx: &Context,
    on_mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for rule in rules {
        let entry = map.entry(rule.syscall).or_insert_with(|| Some(Vec::new()));
        if rule.when.is_empty() {
            // Unconditional: the call matches whatever else is listed for it.
            *entry = None;
            continue;
        }
        if let Some(list) = entry {
            list.push(seccomp_rule(rule, cx)?);
        }
    }
    let map: BTreeMap<i64, Vec<SeccompRule>> = map
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect();
    let err = |source| SeccompError::Filter {
        filter: name.to_string(),
        source,
    };
    let filter = SeccompFilter::new(map, on_mismatch, on_match, ARCH).map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

/// A rule's conditions as one seccompiler rule (their conjunction).
fn seccomp_rule(rule: &Rule, cx: &Context) -> Result<SeccompRule, SeccompError> {
    let err = |source| SeccompError::Rule {
        syscall: rule.name(),
        reason: rule.reason,
        source,
    };
    let conditions = rule
        .when
        .iter()
        .map(|c| {
            let len = match c.width {
                Width::Dword => SeccompCmpArgLen::Dword,
                Width::Qword => SeccompCmpArgLen::Qword,
            };
            let op = match c.cmp {
                Cmp::Eq => SeccompCmpOp::Eq,
                Cmp::Ne => SeccompCmpOp::Ne,
                Cmp::MaskedEq(mask) => SeccompCmpOp::MaskedEq(mask),
            };
            // A Dword condition compares the low half only; keep the value to that half so a
            // constant written as u64 cannot silently never match.
            let value = match c.width {
                Width::Dword => c.value.resolve(cx) & 0xffff_ffff,
                Width::Qword => c.value.resolve(cx),
            };
            SeccompCondition::new(c.arg, len, op, value).map_err(err)
        })
        .collect::<Result<Vec<_>, _>>()?;
    SeccompRule::new(conditions).map_err(err)
}
