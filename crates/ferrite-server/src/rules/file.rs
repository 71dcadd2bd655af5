//! The stored rule set: `data_dir/rules/rules.json`.
//!
//! ```text
//! {"version": 1, "rules": [RuleDefinition, ...]}   -- sorted by name
//! ```
//!
//! Written whole on every change, atomically: a temporary file is written and fsynced, renamed
//! over the old one, and the folder is fsynced, so a crash leaves the old or the new set,
//! never a mix. A file that cannot be read back is an error at startup, never ignored.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use ferrite_api::rules::RuleDefinition;
use serde::{Deserialize, Serialize};

/// The file's name in the rules folder.
pub(super) const FILE_NAME: &str = "rules.json";
/// The format version written.
const VERSION: u32 = 1;

#[derive(Serialize)]
struct Out<'a> {
    version: u32,
    rules: &'a [&'a RuleDefinition],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct In {
    version: u32,
    rules: Vec<RuleDefinition>,
}

/// The stored definitions; none if there is no file yet.
pub(super) fn load(path: &Path) -> Result<Vec<RuleDefinition>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    let file: In = serde_json::from_slice(&text).map_err(|e| {
        format!("damaged ({e}); fix or remove the file (a copy of it keeps the rules)")
    })?;
    if file.version != VERSION {
        return Err(format!(
            "format version {} is not supported (this Ferrite reads version {VERSION})",
            file.version
        ));
    }
    let mut names = BTreeSet::new();
    for r in &file.rules {
        if !names.insert(r.name.as_str()) {
            return Err(format!("damaged: rule {:?} appears twice", r.name));
        }
    }
    Ok(file.rules)
}

/// Replace the stored set with `rules`, atomically and durably.
pub(super) fn save(path: &Path, rules: &[&RuleDefinition]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("the rules file has no folder"))?;
    std::fs::create_dir_all(dir)?;
    let body = serde_json::to_vec_pretty(&Out {
        version: VERSION,
        rules,
    })
    .map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn def(name: &str) -> RuleDefinition {
        serde_json::from_value(serde_json::json!({"name": name, "sql": "SELECT 1 FROM 'a'"}))
            .unwrap()
    }

    #[test]
    fn saves_and_loads_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules").join(FILE_NAME);
        assert!(load(&path).unwrap().is_empty());
        let (a, b) = (def("a"), def("b"));
        save(&path, &[&a, &b]).unwrap();
        assert_eq!(load(&path).unwrap(), vec![a.clone(), b]);
        save(&path, &[&a]).unwrap();
        assert_eq!(load(&path).unwrap(), vec![a]);
        std::fs::write(&path, b"{\"version\": 1, \"rules\": [").unwrap();
        assert!(load(&path).unwrap_err().contains("damaged"));
        std::fs::write(&path, b"{\"version\": 9, \"rules\": []}").unwrap();
        assert!(load(&path).unwrap_err().contains("version 9"));
    }
}
