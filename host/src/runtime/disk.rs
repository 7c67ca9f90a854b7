//! The bytes a call may add to its plugin's writable directories.
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

/// The default of a plugin's `disk` limit.
pub const DEFAULT_DISK_BYTES: u64 = 1 << 30;

/// How often a running call's directories are measured.
pub const POLL: Duration = Duration::from_millis(100);

/// The most directory entries one measurement visits: beyond that the walk would cost more
/// than the call, and the count stops (the limit then holds only for what was counted).
const MAX_ENTRIES: usize = 100_000;

/// Watches one call's writable directories; stops watching when dropped.
pub struct DiskWatch {
    dirs: Arc<Vec<PathBuf>>,
    baseline: u64,
    limit: u64,
    over: Arc<AtomicBool>,
    task: Option<tokio::task::AbortHandle>,
}

impl DiskWatch {
    /// Starts watching `dirs` (the writable grants); None when there are none. `over` is set
    /// once the call has added more than `limit` bytes.
    pub fn start(dirs: Vec<PathBuf>, limit: u64, over: Arc<AtomicBool>) -> Option<DiskWatch> {
        if dirs.is_empty() {
            return None;
        }
        let dirs = Arc::new(dirs);
        let baseline = usage(&dirs);
        let (watched, flag) = (dirs.clone(), over.clone());
        // Outside a Tokio runtime only the measurement at return applies.
        let task = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            runtime
                .spawn(async move {
                    loop {
                        tokio::time::sleep(POLL).await;
                        let dirs = watched.clone();
                        let used = tokio::task::spawn_blocking(move || usage(&dirs))
                            .await
                            .unwrap_or(0);
                        if used.saturating_sub(baseline) > limit {
                            flag.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                })
                .abort_handle()
        });
        Some(DiskWatch {
            dirs,
            baseline,
            limit,
            over,
            task,
        })
    }

    /// Measures now (when the call has returned); whether it went over.
    pub fn went_over(&self) -> bool {
        if usage(&self.dirs).saturating_sub(self.baseline) > self.limit {
            self.over.store(true, Ordering::SeqCst);
        }
        self.over.load(Ordering::SeqCst)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The directories, for the error message.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

impl Drop for DiskWatch {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The bytes of the files under `dirs`, symbolic links not followed.
fn usage(dirs: &[PathBuf]) -> u64 {
    let mut total = 0u64;
    let mut pending: Vec<PathBuf> = dirs.to_vec();
    let mut visited = 0usize;
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            visited += 1;
            if visited > MAX_ENTRIES {
                return total;
            }
            total = total.saturating_add(entry_size(&entry.path(), &mut pending));
        }
    }
    total
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
        assert_eq!(usage(&[dir.path().to_path_buf()]), 1024 + link_len);
    }
}
