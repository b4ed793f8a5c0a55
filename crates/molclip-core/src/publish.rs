//! A folder of results that appears whole or not at all: built in a staging folder beside
//! its destination, renamed into place when complete, removed on error or Ctrl-C, with one
//! writer at a time; `--force` replaces only a folder molclip itself wrote.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{IoError, LockError, OutputLock};

/// What marks a folder as one molclip wrote, and so one `overwrite` may replace.
#[derive(Clone, Copy)]
pub struct Ownership<'a> {
    /// A file in the folder...
    pub marker_file: &'a str,
    /// ...whose text starts with this.
    pub marker: &'a str,
    /// The names molclip writes at the folder's top level: anything else is a user's.
    pub names: &'a dyn Fn(&str) -> bool,
    /// What the folder is, for messages (`a simulated dataset`).
    pub what: &'a str,
}

/// Builds `out` with `write`, which fills the staging folder it is given. Returns the
/// staging folders of interrupted runs that were removed first. Errors that `write` returns
/// are passed through `relocate(error, staging, out)`, so that they name the files as they
/// would be in `out`.
pub fn publish_dir<E: From<IoError> + From<LockError>>(
    out: &Path,
    overwrite: bool,
    owner: &Ownership,
    write: &mut dyn FnMut(&Path) -> Result<(), E>,
    relocate: &dyn Fn(E, &Path, &Path) -> E,
) -> Result<Vec<PathBuf>, E> {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "output".into());
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(IoError::at(parent))?;
    // One writer per folder: the lock sits beside it, as the folder is renamed into place.
    let _lock = OutputLock::acquire(&parent.join(format!(".{name}.lock")), out, owner.what, true)?;
    check_replaceable(out, overwrite, owner)?;
    let staging = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    // Staging folders of earlier runs go first: they are ours, by name, and with the lock
    // held, no living process is writing them.
    let prefix = format!(".{name}.partial-");
    let mut removed = Vec::new();
    for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            fs::remove_dir_all(entry.path()).map_err(IoError::at(entry.path()))?;
            removed.push(entry.path());
        }
    }
    fs::create_dir_all(&staging).map_err(IoError::at(&staging))?;
    // Nothing half-written is left behind: on any error, or on Ctrl-C, the staging folder goes.
    let _on_interrupt = crate::remove_on_interrupt(&staging);
    let written = write(&staging).map_err(|e| relocate(e, &staging, out)).and_then(|()| {
        if out.exists() {
            fs::remove_dir_all(out).map_err(IoError::at(out))?;
        }
        fs::rename(&staging, out).map_err(IoError::at(out))?;
        Ok(())
    });
    if written.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    written?;
    Ok(removed)
}

/// `path` as it will be once the staging folder `staging` is renamed to `out` (a path
/// elsewhere is returned as it is): what an error met while writing should name.
pub fn published_path(path: PathBuf, staging: &Path, out: &Path) -> PathBuf {
    path.strip_prefix(staging).map(|rest| out.join(rest)).unwrap_or(path)
}

/// Refuses to write into `out` unless it is absent or empty, or, with `overwrite`, a folder
/// `owner` says molclip wrote and nothing else: `--force` never deletes a user's files.
fn check_replaceable(out: &Path, overwrite: bool, owner: &Ownership) -> Result<(), IoError> {
    let refuse = |reason: String| IoError {
        path: out.into(),
        source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, reason),
    };
    if !out.exists() {
        return Ok(());
    }
    let entries: Vec<String> = fs::read_dir(out)
        .map_err(IoError::at(out))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(IoError::at(out))?;
    if entries.is_empty() {
        return Ok(());
    }
    if !overwrite {
        return Err(refuse("exists and is not empty (pass --force to replace it)".into()));
    }
    if let Some(why) = protected(out) {
        return Err(refuse(format!("is {why}: --force never replaces it; choose another --out")));
    }
    let marked = fs::read_to_string(out.join(owner.marker_file)).is_ok_and(|t| t.starts_with(owner.marker));
    let what = owner.what;
    match entries.iter().find(|n| !(owner.names)(n)) {
        _ if !marked => Err(refuse(format!(
            "is not {what} molclip wrote (no {} of ours): --force only replaces those; choose another --out",
            owner.marker_file
        ))),
        Some(foreign) => Err(refuse(format!(
            "holds `{foreign}`, which molclip did not write: --force only replaces {what}; \
             move it away or choose another --out"
        ))),
        None => Ok(()),
    }
}

/// Why `out` must never be replaced, whatever it holds: the filesystem's root, the home
/// folder, or the working directory or one of its ancestors.
fn protected(out: &Path) -> Option<&'static str> {
    let out = out.canonicalize().ok()?;
    if out.parent().is_none() {
        return Some("the filesystem's root");
    }
    let home = std::env::var_os("HOME").and_then(|h| Path::new(&h).canonicalize().ok());
    if home.is_some_and(|h| h == out) {
        return Some("the home folder");
    }
    let cwd = std::env::current_dir().ok().and_then(|d| d.canonicalize().ok());
    if cwd.is_some_and(|d| d.starts_with(&out)) {
        return Some("the working directory or one of its ancestors");
    }
    None
}
