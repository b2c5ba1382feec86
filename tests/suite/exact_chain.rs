//! torch_bench's exact chain against its second, independent implementation: the plain-Python
//! `scripts/int8_chain.py`, written from the specification alone, must print protocol's known
//! answers, so a mistake in the recipe cannot hide in one implementation and its own tests.

use std::process::Command;

use aitbc_protocol::workload::torch_bench::KNOWN_ANSWERS;

#[test]
fn the_python_reference_prints_the_known_answers() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/int8_chain.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script);
    for (n, iters, seed, _, _) in KNOWN_ANSWERS {
        cmd.args([n.to_string(), iters.to_string(), seed.to_string()]);
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("SKIP the Python reference: python3 cannot run: {e}");
            return;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), KNOWN_ANSWERS.len(), "{text}");
    for (line, (n, iters, seed, sha, root)) in lines.iter().zip(KNOWN_ANSWERS) {
        assert_eq!(*line, format!("{n} {iters} {seed} {sha} {root}"));
    }
}
