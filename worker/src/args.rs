//! The worker's whole argv: the program name, the word `worker`, then the flags that
//! [`aitbc_protocol::args::WorkerArgs::parse`] reads (the one struct the supervisor writes with
//! `to_args`). This module only checks the subcommand and maps a refusal to
//! [`WorkerError::Usage`]; it must never read the environment or a config file.

use std::ffi::{OsStr, OsString};

use aitbc_protocol::args::WorkerArgs;
use aitbc_protocol::wire::WireError;

use crate::WorkerError;

/// Parses the worker's whole argv: the program name, the word `worker`, then the flags.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<WorkerArgs, WorkerError> {
    let mut it = args.into_iter().skip(1);
    match it.next() {
        Some(w) if w == "worker" => {}
        other => {
            return Err(WorkerError::Usage {
                flag: "(subcommand)".into(),
                value: other
                    .as_deref()
                    .unwrap_or(OsStr::new(""))
                    .to_string_lossy()
                    .into_owned(),
                reason: "expected `worker`".into(),
            })
        }
    }
    WorkerArgs::parse(it).map_err(|e| match e {
        WireError::Usage {
            flag,
            value,
            reason,
        } => WorkerError::Usage {
            flag,
            value,
            reason,
        },
        other => WorkerError::Wire(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subcommand_is_checked_and_refusals_keep_their_text() {
        let argv = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let e = parse_args(argv(&["aitbc-miner", "run"])).unwrap_err();
        assert!(e.to_string().contains("expected `worker`"), "{e}");
        let e = parse_args(argv(&["aitbc-miner", "worker", "--kind", "tpu"])).unwrap_err();
        assert!(matches!(e, WorkerError::Usage { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("--kind = \"tpu\": expected cpu or gpu"),
            "{e}"
        );
        let ok = parse_args(argv(&["aitbc-miner", "worker", "--job-dir", "/j"])).unwrap();
        assert_eq!(ok.job_dir, std::path::Path::new("/j"));
    }
}
