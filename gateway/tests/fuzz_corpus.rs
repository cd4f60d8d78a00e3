//! The fuzz corpus as regression tests on stable Rust: every file under
//! `fuzz/corpus/<target>/` (and any crash input kept in
//! `fuzz/regressions/<target>/`) goes through the same invariant check its
//! fuzz target runs (`scopegate_gateway::tools::invariants`). Fast: the
//! corpus is minimised and small.

use std::path::Path;

use scopegate_gateway::tools::invariants::TARGETS;

#[test]
fn every_corpus_input_keeps_its_targets_invariants() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut total = 0;
    for (name, check) in TARGETS {
        let mut n = 0;
        for folder in ["corpus", "regressions"] {
            let dir = fuzz.join(folder).join(name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                assert!(
                    folder != "corpus",
                    "no corpus for the fuzz target {name}: {}",
                    dir.display()
                );
                continue;
            };
            for e in entries {
                let path = e.expect("corpus entry").path();
                let data = std::fs::read(&path).expect("read corpus file");
                let outcome = std::panic::catch_unwind(|| check(&data));
                assert!(
                    outcome.is_ok(),
                    "{name}: {} breaks an invariant (input {:?})",
                    path.display(),
                    String::from_utf8_lossy(&data)
                );
                n += 1;
            }
        }
        assert!(n > 0, "{name}: empty corpus");
        total += n;
    }
    println!("{total} corpus inputs checked");
}
