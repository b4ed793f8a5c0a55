//! Files written so that a reader, or a crash, never leaves half of one: the content goes to
//! a temporary file beside the target, which is then renamed over it.

use std::path::{Path, PathBuf};

/// An I/O error, with the path it happened at.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct IoError {
    /// The file or folder.
    pub path: PathBuf,
    /// What the operating system said.
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// A `map_err` adapter naming `path`.
    pub fn at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> IoError {
        let path = path.into();
        move |source| IoError { path, source }
    }
}

/// The temporary name `path` is written under: hidden, beside it, unique to this process.
fn temporary(path: &Path) -> PathBuf {
    let name = path.file_name().map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    write_atomic_with(path, |tmp| std::fs::write(tmp, bytes).map_err(IoError::at(tmp)))
}

/// Has `write` write the file at the temporary path it is given, then renames it to `path`.
/// On any error the temporary file is removed and `path` is left as it was. The file gets
/// the permissions of any new file (0666 less the umask), even where `write` made its own
/// private (safetensors writes through a 0600 temporary file).
pub fn write_atomic_with<E: From<IoError>>(path: &Path, write: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), E> {
    let tmp = temporary(path);
    // Named by the file asked for: the temporary name means nothing to a reader.
    let usual = std::fs::File::create(&tmp).and_then(|f| f.metadata()).map_err(IoError::at(path))?.permissions();
    let result = write(&tmp)
        .and_then(|()| std::fs::set_permissions(&tmp, usual).map_err(|e| E::from(IoError::at(&tmp)(e))))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| E::from(IoError::at(path)(e))));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let failed: Result<(), IoError> = write_atomic_with(&path, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(IoError { path: tmp.to_path_buf(), source: std::io::Error::other("disk full") })
        });
        assert!(failed.unwrap_err().to_string().contains("disk full"));
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.txt")]);
        // A writer that makes its file private does not make the result private.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let private = dir.path().join("private.bin");
            write_atomic_with(&private, |tmp| -> Result<(), IoError> {
                std::fs::remove_file(tmp).map_err(IoError::at(tmp))?;
                std::fs::write(tmp, b"x").map_err(IoError::at(tmp))?;
                std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o600)).map_err(IoError::at(tmp))
            })
            .unwrap();
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&private), mode(&path), "as a plain write would make it");
        }
        // A folder that does not exist is an error naming the path.
        let e = write_atomic(&dir.path().join("no/such/b.txt"), b"x").unwrap_err().to_string();
        assert!(e.contains("b.txt"), "{e}");
    }
}
