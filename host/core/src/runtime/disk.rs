//! The bytes (and entries) a call may add to its plugin's writable directories.
//!
//! WASI gives no quota on a preopened directory, so the host measures: the writable grants'
//! size when the call (or session) starts, then every [`POLL`] while it runs, and once more
//! when it returns. A call that has added more than the plugin's `disk` limit is stopped (the
//! epoch callback interrupts it) or, if it already returned, fails; what it wrote stays, so
//! the error says where. Between two polls a plugin can write past the limit by what the disk
//! takes in [`POLL`], which docs/sandbox.md states.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use crate::grants::DEFAULT_DISK_BYTES;

/// How often a running call's directories are measured.
pub const POLL: Duration = Duration::from_millis(100);

/// The most entries (files and directories) a call may add: beyond that a measurement would
/// cost more than the call, and empty files use up the file system's inodes all the same.
pub const MAX_NEW_ENTRIES: usize = 10_000;

/// What one call may add to its writable directories, against what they held at its start.
#[derive(Debug, Clone)]
struct Budget {
    dirs: Arc<Vec<PathBuf>>,
    start: Usage,
    limit: u64,
}

impl Budget {
    /// Whether the directories now hold more than `limit` bytes or [`MAX_NEW_ENTRIES`] entries
    /// over what they held at the start (the walk stops at that many entries).
    fn exceeded(&self) -> bool {
        let stop_at = self.start.entries.saturating_add(MAX_NEW_ENTRIES);
        let now = usage(&self.dirs, stop_at);
        now.entries > stop_at || now.bytes.saturating_sub(self.start.bytes) > self.limit
    }
}

/// Watches one call's writable directories; stops watching when dropped.
pub struct DiskWatch {
    budget: Budget,
    over: Arc<AtomicBool>,
    task: Option<tokio::task::AbortHandle>,
}

impl DiskWatch {
    /// Starts watching `dirs` (the writable grants); None when there are none. `over` is set
    /// once the call has added more than `limit` bytes or [`MAX_NEW_ENTRIES`] entries.
    pub fn start(dirs: Vec<PathBuf>, limit: u64, over: Arc<AtomicBool>) -> Option<DiskWatch> {
        if dirs.is_empty() {
            return None;
        }
        let start = usage(&dirs, usize::MAX);
        let budget = Budget {
            dirs: Arc::new(dirs),
            start,
            limit,
        };
        let (watched, flag) = (budget.clone(), over.clone());
        // Outside a Tokio runtime only the measurement at return applies.
        let task = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            runtime
                .spawn(async move {
                    loop {
                        tokio::time::sleep(POLL).await;
                        let budget = watched.clone();
                        let exceeded = tokio::task::spawn_blocking(move || budget.exceeded());
                        if exceeded.await.unwrap_or(false) {
                            flag.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                })
                .abort_handle()
        });
        Some(DiskWatch { budget, over, task })
    }

    /// Measures now (when the call has returned); whether it went over.
    pub fn went_over(&self) -> bool {
        if self.budget.exceeded() {
            self.over.store(true, Ordering::SeqCst);
        }
        self.over.load(Ordering::SeqCst)
    }

    pub fn limit(&self) -> u64 {
        self.budget.limit
    }

    /// The directories, for the error message.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.budget.dirs
    }
}

impl Drop for DiskWatch {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// What a set of directories holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Usage {
    bytes: u64,
    entries: usize,
}

/// The bytes of the files under `dirs` and their entries, symbolic links not followed; the
/// walk stops after `stop_at` entries.
fn usage(dirs: &[PathBuf], stop_at: usize) -> Usage {
    let mut found = Usage {
        bytes: 0,
        entries: 0,
    };
    let mut pending: Vec<PathBuf> = dirs.to_vec();
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            found.entries += 1;
            if found.entries > stop_at {
                return found;
            }
            found.bytes = found
                .bytes
                .saturating_add(entry_size(&entry.path(), &mut pending));
        }
    }
    found
}

fn entry_size(path: &Path, pending: &mut Vec<PathBuf>) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            pending.push(path.to_path_buf());
            0
        }
        Ok(meta) => meta.len(),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_nested_files_and_not_what_links_point_to() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("sub/b"), vec![0u8; 24]).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("big"), vec![0u8; 1 << 20]).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let link_len = std::fs::symlink_metadata(dir.path().join("link"))
            .unwrap()
            .len();
        let found = usage(&[dir.path().to_path_buf()], usize::MAX);
        assert_eq!(found.bytes, 1024 + link_len);
        assert_eq!(found.entries, 4);
    }

    #[test]
    fn a_call_that_adds_too_many_entries_goes_over_even_with_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("existing"), b"").unwrap();
        let over = Arc::new(AtomicBool::new(false));
        let watch = DiskWatch::start(vec![dir.path().to_path_buf()], 1 << 30, over).unwrap();
        for i in 0..MAX_NEW_ENTRIES {
            std::fs::write(dir.path().join(format!("f{i}")), b"").unwrap();
        }
        assert!(!watch.went_over(), "exactly the allowance");
        std::fs::write(dir.path().join("one-more"), b"").unwrap();
        assert!(watch.went_over());
    }
}
