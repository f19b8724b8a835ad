//! Checks over the whole source tree that no compiler lint covers.
//!
//! Run as a unit test of xtask, so `cargo test` keeps them: every Rust file starts with a
//! `//!` doc that says why it exists.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_rust_file_starts_with_a_module_doc() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let mut files = Vec::new();
        rust_files(root, &mut files);
        assert!(
            files.len() > 5,
            "found only {} Rust files under {}",
            files.len(),
            root.display()
        );
        let missing: Vec<_> = files
            .iter()
            .filter(|f| {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                !text.trim_start().starts_with("//!")
            })
            .collect();
        assert!(
            missing.is_empty(),
            "files without a leading `//!` doc: {missing:#?}"
        );
    }
}
