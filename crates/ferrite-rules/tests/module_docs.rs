//! Architecture check: every source file of the crate opens with a `//!` module doc.

use std::path::Path;

fn check(dir: &Path, missing: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir)
        .expect("readable source dir")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            check(&path, missing);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("readable source file");
            if !text.trim_start().starts_with("//!") {
                missing.push(path.display().to_string());
            }
        }
    }
}

#[test]
fn every_module_starts_with_a_doc_comment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut missing = Vec::new();
    for dir in ["src", "tests", "benches"] {
        check(&root.join(dir), &mut missing);
    }
    assert!(missing.is_empty(), "files without //! docs: {missing:?}");
}
