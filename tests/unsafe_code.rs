//! `unsafe` is denied crate-wide (Cargo.toml). Two audited modules allow
//! it: the librdkafka batch calls (`src/kafka/batch.rs`) and the SSE2 pass
//! of the JSON scan (`src/input/classify.rs`). Every block in them says why
//! it is sound.

use std::path::{Path, PathBuf};

/// The modules allowed `unsafe`, with the least number of blocks each holds
/// (so that a test that finds none has not lost its way).
const AUDITED: [(&str, usize); 2] = [("src/input/classify.rs", 1), ("src/kafka/batch.rs", 8)];

#[test]
fn unsafe_is_allowed_in_the_audited_modules_only_and_every_block_is_justified() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("src")];
    let mut allowing = Vec::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(
                std::fs::read_dir(&path)
                    .expect("dir")
                    .map(|e| e.expect("entry").path()),
            );
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("read");
            if text.contains("allow(unsafe_code)") {
                allowing.push(path.strip_prefix(root).expect("under root").to_path_buf());
            }
        }
    }
    allowing.sort();
    let audited: Vec<PathBuf> = AUDITED
        .iter()
        .map(|(path, _)| PathBuf::from(path))
        .collect();
    assert_eq!(allowing, audited);
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    assert!(cargo.contains("unsafe_code = \"deny\""));

    for (path, least) in AUDITED {
        let text = std::fs::read_to_string(root.join(path)).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        let mut blocks = 0;
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if !code.contains("unsafe {") && !code.contains("unsafe{") {
                continue;
            }
            blocks += 1;
            // The nearest comment above the block, within its statement, is a SAFETY one.
            let justified = lines[..=i]
                .iter()
                .rev()
                .take(12)
                .any(|l| l.trim_start().starts_with("// SAFETY:"));
            assert!(
                justified,
                "{path}:{}: unsafe block without a SAFETY comment",
                i + 1
            );
        }
        assert!(blocks >= least, "{path}: found {blocks} unsafe blocks");
    }
}
