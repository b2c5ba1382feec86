//! Each workload's fragment of the policy: the system calls it needs beyond the base list of
//! its worker kind (`policy::rules`), each with its reason. A worker serves every workload of
//! its build, so it is confined by the base list plus the union of their fragments; a
//! workload's fragment is the one place its extra needs are written down and reviewed.
//!
//! This module must never grant a call for a reason that is not the workload's own (what every
//! worker needs belongs to the base list), and, like the rest of the crate, only returns data.

use aitbc_protocol::workload::Workload;

use crate::policy::allow_if_rule as allow_if;
use crate::policy::allow_rule as allow;
use crate::rule::{eq32, Rule};

/// The rules `workload` adds to the base list.
pub fn fragment(workload: Workload) -> Vec<Rule> {
    match workload {
        Workload::TorchBench => torch_bench(),
        // Not computed by any worker yet: they need nothing.
        Workload::SdInfer | Workload::LlmGen => Vec::new(),
    }
}

/// torch_bench's CPU chain runs on a rayon pool of exactly the job's threads.
fn torch_bench() -> Vec<Rule> {
    use libc::*;
    vec![
        allow(
            SYS_sched_yield,
            "torch_bench: rayon's idle compute threads yield while spinning",
        ),
        allow(
            SYS_sched_getaffinity,
            "torch_bench: rayon reads the CPU set when its pool starts",
        ),
        allow_if(
            SYS_prctl,
            &[eq32(0, PR_SET_NAME as u64)],
            "torch_bench: the compute threads are named aitbc-compute-N",
        ),
    ]
}
