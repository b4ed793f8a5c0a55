//! One writer per output: an exclusive OS lock on a lock file that names its holder's pid.
//! The OS releases the lock when the process dies, so a killed run never leaves a stale one.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::fs::IoError;

/// A held lock; released when dropped (and by the OS if the process dies).
#[derive(Debug)]
pub struct OutputLock {
    file: std::fs::File,
    path: PathBuf,
    remove: bool,
}

/// Why an output could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "{}: another molclip process ({holder}) is writing {what}; wait for it to finish, or choose another --out",
        output.display()
    )]
    Held {
        /// The output (folder) that is held.
        output: PathBuf,
        /// What is being written (`a run`, `a dataset`).
        what: String,
        /// `pid N`, as the lock file records it.
        holder: String,
    },
    /// The lock file could not be opened.
    #[error(transparent)]
    Io(#[from] IoError),
}

impl OutputLock {
    /// Takes `lock_file`, which guards `output`, for this process, writing its pid there.
    /// With `remove`, the lock file is deleted when released (for lock files beside an
    /// output rather than inside it).
    pub fn acquire(lock_file: &Path, output: &Path, what: &str, remove: bool) -> Result<Self, LockError> {
        // A file deleted by the holder it was released by is not a lock: open it again.
        for _ in 0..3 {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(lock_file)
                .map_err(IoError::at(lock_file))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut pid = String::new();
                    let _ = file.read_to_string(&mut pid);
                    let holder = match pid.trim() {
                        "" => "pid unknown".to_string(),
                        pid => format!("pid {pid}"),
                    };
                    return Err(LockError::Held { output: output.into(), what: what.into(), holder });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(IoError::at(lock_file)(e).into()),
            }
            if !same_file(&file, lock_file) {
                continue;
            }
            let record = |f: &mut std::fs::File| {
                f.set_len(0)?;
                f.rewind()?;
                writeln!(f, "{}", std::process::id())?;
                f.flush()
            };
            record(&mut file).map_err(IoError::at(lock_file))?;
            return Ok(Self { file, path: lock_file.into(), remove });
        }
        Err(IoError::at(lock_file)(std::io::Error::other("the lock file kept being replaced")).into())
    }
}

/// Whether the open `file` is still the one at `path` (and not one since deleted).
#[cfg(unix)]
fn same_file(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &std::fs::File, path: &Path) -> bool {
    path.exists()
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Deleted while still held, so that nobody can lock the file being deleted.
        if self.remove {
            let _ = std::fs::remove_file(&self.path);
        }
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_with_the_holders_pid_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let (lock, out) = (dir.path().join(".out.lock"), dir.path().join("out"));
        let held = OutputLock::acquire(&lock, &out, "a dataset", true).unwrap();
        let e = OutputLock::acquire(&lock, &out, "a dataset", true).unwrap_err().to_string();
        assert!(e.contains(&format!("(pid {})", std::process::id())) && e.contains("writing a dataset"), "{e}");
        assert!(e.starts_with(&out.display().to_string()), "{e}");
        drop(held);
        assert!(!lock.exists(), "a lock beside its output is removed when released");
        let kept = OutputLock::acquire(&lock, &out, "a run", false).unwrap();
        drop(kept);
        assert!(lock.exists());
        OutputLock::acquire(&lock, &out, "a run", false).unwrap();
    }
}
