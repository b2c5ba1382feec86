//! The kernels as PTX text, embedded in the binary, and the names the Rust side launches.
//!
//! `kernels/torch_bench.ptx` is generated from `kernels/torch_bench.cu` by
//! `scripts/gen-ptx.sh` (NVRTC 12.0 from the `nvidia-cuda-nvrtc-cu12==12.0.140` wheel, virtual
//! architecture `compute_70`) and committed; CI regenerates it and fails on any difference. Its
//! `.version 8.0` is what lets drivers from the 525 series on load it: a driver refuses PTX
//! newer than its own CUDA version. This module must never be edited to point at another file
//! or to build PTX at run time (a miner host has the driver, not NVRTC).
//!
//! The small parsers here ([`isa_version`], [`entries`]) exist so that tests, which run without
//! a GPU, can check the embedded text declares the right ISA and every kernel we launch.

/// The PTX text of `kernels/torch_bench.cu`.
pub const TORCH_BENCH_PTX: &str = include_str!("../kernels/torch_bench.ptx");

/// The PTX ISA version the embedded text must declare (`.version 8.0`).
pub const ISA_VERSION: (u32, u32) = (8, 0);

/// Generates `A_0`, or `B` transposed (see `kernels/torch_bench.cu`).
pub const FILL_INPUT: &str = "aitbc_fill_input";
/// The crate's own exact int8 GEMM (dp4a, int32 accumulation), `A` row-major times `B` given
/// transposed.
pub const IGEMM_TN: &str = "aitbc_igemm_tn";
/// The requantization of an int32 product back to the int8 `A` of the next step.
pub const REQUANT: &str = "aitbc_requant";

/// Every kernel [`crate::Gpu`] launches, by entry name.
pub const KERNELS: [&str; 3] = [FILL_INPUT, IGEMM_TN, REQUANT];

/// The `(major, minor)` of the first `.version` directive of `ptx`, if any.
pub fn isa_version(ptx: &str) -> Option<(u32, u32)> {
    let line = ptx
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(".version"))?;
    let (major, minor) = line.strip_prefix(".version")?.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The names of the `.entry` (kernel) directives of `ptx`, in order.
pub fn entries(ptx: &str) -> Vec<&str> {
    ptx.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            loop {
                match words.next()? {
                    ".entry" => break words.next(),
                    ".visible" | ".weak" | ".extern" => continue,
                    _ => return None,
                }
            }
        })
        .map(|name| name.trim_end_matches('('))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_read_directives_not_comments() {
        let text = "// .version 9.9\n.version 8.0\n.target sm_70\n\
                    .visible .entry first(\n\t.param .u64 p\n)\n// .entry not_me(\n\
                    .entry second (\n.func helper(\n";
        assert_eq!(isa_version(text), Some((8, 0)));
        assert_eq!(entries(text), vec!["first", "second"]);
        assert_eq!(isa_version(".version eight"), None);
        assert_eq!(isa_version(""), None);
    }

    #[test]
    fn embedded_ptx_is_isa_8_0_and_has_every_kernel_we_launch() {
        assert_eq!(isa_version(TORCH_BENCH_PTX), Some(ISA_VERSION));
        let found = entries(TORCH_BENCH_PTX);
        for k in KERNELS {
            assert!(
                found.contains(&k),
                "{k} is not an entry of the PTX: {found:?}"
            );
        }
    }
}
