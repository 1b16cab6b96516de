//! The fuzzers' corpora, replayed through the same targets as ordinary tests: every input
//! `cargo fuzz` ever kept still passes, and CI needs no fuzzer.

use std::path::Path;

#[test]
fn every_committed_fuzz_input_still_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (target, run) in secretfs::fuzz_targets::TARGETS {
        let dir = root.join(target);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            // A panic names the input that caused it.
            let result = std::panic::catch_unwind(|| run(&data));
            assert!(
                result.is_ok(),
                "fuzz target {target} panicked on {}",
                path.display()
            );
            inputs += 1;
        }
        assert!(inputs > 0, "no corpus for {target}");
    }
}
