//! Rule state checkpoints: `data_dir/rules/state/rule-{name}.cbor`, the bytes of
//! [`ferrite_rules::lang::Rule::checkpoint`].
//!
//! An evaluator writes one every `rules.checkpoint_interval` while it has seen input since
//! the last, and a last one when the server shuts down; at start it restores from it (a
//! checkpoint of another definition, or a damaged one, is logged and the rule starts empty).
//! Writes go to a temporary file, fsynced, then renamed over the old one and the folder
//! fsynced, so a crash leaves the previous checkpoint or the new one, never a torn file.
//! Creating, replacing, enabling or disabling a rule removes its checkpoint (its state
//! restarts, as documented); a rename is only done while its writer is still current, checked
//! under the same lock as removals, so a rule that was just replaced cannot resurrect the
//! old state.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Where checkpoints live and how often they are taken.
#[derive(Debug)]
pub(crate) struct Checkpoints {
    dir: PathBuf,
    /// `None`: checkpoints are off.
    pub(crate) interval: Option<Duration>,
    /// Serialises renames against removals.
    lock: Mutex<()>,
}

impl Checkpoints {
    pub(crate) fn new(dir: PathBuf, interval: Duration) -> Self {
        Self {
            dir,
            interval: (!interval.is_zero()).then_some(interval),
            lock: Mutex::new(()),
        }
    }

    fn path(&self, rule: &str) -> PathBuf {
        // Rule names are letters, digits, '-', '_' and '.': the prefix keeps "." and ".."
        // plain file names.
        self.dir.join(format!("rule-{rule}.cbor"))
    }

    /// The rule's last checkpoint, if any.
    pub(crate) fn load(&self, rule: &str) -> Option<Vec<u8>> {
        match std::fs::read(self.path(rule)) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(rule, error = %e, "rule checkpoint unreadable; starting empty");
                None
            }
        }
    }

    /// Write `bytes` as the rule's checkpoint if `current()` still holds once it is on disk.
    pub(crate) fn save(
        &self,
        rule: &str,
        bytes: &[u8],
        current: impl FnOnce() -> bool,
    ) -> std::io::Result<bool> {
        use std::io::Write;
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(rule);
        let tmp = path.with_extension("cbor.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if !current() {
            drop(std::fs::remove_file(&tmp));
            return Ok(false);
        }
        std::fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)?;
        Ok(true)
    }

    /// Forget the rule's state.
    pub(crate) fn remove(&self, rule: &str) {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        match std::fs::remove_file(self.path(rule)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(rule, error = %e, "rule checkpoint not removed"),
        }
    }

    /// Remove checkpoints (and leftover temporary files) of rules not in `rules`.
    pub(crate) fn remove_others(&self, rules: &[&str]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let keep: Vec<PathBuf> = rules.iter().map(|r| self.path(r)).collect();
        for entry in entries.flatten() {
            let path = entry.path();
            if !keep.contains(&path) {
                drop(std::fs::remove_file(&path));
            }
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
