//! The committed PTX, as the binary embeds it: PTX ISA 8.0 (so drivers from the 525 series on
//! load it), and an entry for every kernel the Rust side launches. That the PTX is what the
//! committed CUDA C compiles to is `scripts/gen-ptx.sh --check`'s job (a CI step).

use aitbc_cuda::ptx::{entries, isa_version, KERNELS, TORCH_BENCH_PTX};

#[test]
fn ptx_declares_isa_8_0_and_targets_compute_70() {
    assert_eq!(isa_version(TORCH_BENCH_PTX), Some((8, 0)));
    let first_version = TORCH_BENCH_PTX
        .lines()
        .find(|l| l.starts_with(".version"))
        .unwrap();
    assert_eq!(first_version, ".version 8.0");
    assert!(
        TORCH_BENCH_PTX.lines().any(|l| l == ".target sm_70"),
        "the PTX must target the compute_70 virtual architecture"
    );
    assert!(TORCH_BENCH_PTX.contains("Cuda compilation tools, release 12.0"));
}

#[test]
fn ptx_has_an_entry_for_every_kernel_we_launch_and_no_other() {
    let mut found = entries(TORCH_BENCH_PTX);
    found.sort_unstable();
    let mut want = KERNELS.to_vec();
    want.sort_unstable();
    assert_eq!(found, want);
}

#[test]
fn the_embedded_ptx_is_the_committed_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/torch_bench.ptx");
    assert_eq!(std::fs::read_to_string(path).unwrap(), TORCH_BENCH_PTX);
}
