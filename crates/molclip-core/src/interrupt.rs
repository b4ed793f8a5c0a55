//! What an interrupted process must not leave behind: folders registered here are removed by
//! [`remove_registered`], which the binary's Ctrl-C / SIGTERM handler calls before it exits.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static REGISTERED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether [`remove_registered`] has been called: the process is being interrupted, and an
/// error a worker meets now (its staging folder vanished under it) is the interruption's.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Registered while alive: dropping it (the work finished or failed, and cleaned up itself)
/// takes the folder off the list.
#[derive(Debug)]
pub struct RemoveOnInterrupt(PathBuf);

/// Registers `folder` (a staging folder) for removal if the process is interrupted.
pub fn remove_on_interrupt(folder: &Path) -> RemoveOnInterrupt {
    REGISTERED.lock().unwrap_or_else(|e| e.into_inner()).push(folder.to_path_buf());
    RemoveOnInterrupt(folder.to_path_buf())
}

impl Drop for RemoveOnInterrupt {
    fn drop(&mut self) {
        let mut list = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = list.iter().position(|p| *p == self.0) {
            list.remove(i);
        }
    }
}

/// Removes every registered folder (the interrupt handler's work); returns those removed.
/// Workers may still be writing into them, so each removal is tried a few times.
pub fn remove_registered() -> Vec<PathBuf> {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let list = std::mem::take(&mut *REGISTERED.lock().unwrap_or_else(|e| e.into_inner()));
    let mut removed = Vec::new();
    for folder in list {
        for _ in 0..5 {
            if std::fs::remove_dir_all(&folder).is_ok() || !folder.exists() {
                removed.push(folder);
                break;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_folders_are_removed_until_their_guard_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(a.join("deep")).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let _a = remove_on_interrupt(&a);
        drop(remove_on_interrupt(&b));
        let removed = remove_registered();
        assert!(removed.contains(&a) && !removed.contains(&b), "{removed:?}");
        assert!(!a.exists() && b.exists());
        assert!(interrupted());
    }
}
