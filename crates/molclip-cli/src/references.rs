//! The Python references `molclip bench` measures against, built into the binary: a bench run
//! outside the repository (an installed binary, another folder) still finds them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Each reference script, and the modules they import (from `../python`), by their path in
/// the repository, which is also their default path on the command line.
const FILES: [(&str, &str); 8] = [
    ("benches/chem_rdkit.py", include_str!("../../../benches/chem_rdkit.py")),
    ("benches/data_reference.py", include_str!("../../../benches/data_reference.py")),
    ("benches/eval_reference.py", include_str!("../../../benches/eval_reference.py")),
    ("benches/extract_reference.py", include_str!("../../../benches/extract_reference.py")),
    ("benches/model_reference.py", include_str!("../../../benches/model_reference.py")),
    ("benches/train_reference.py", include_str!("../../../benches/train_reference.py")),
    ("python/augment_reference.py", include_str!("../../../python/augment_reference.py")),
    ("python/torch_reference.py", include_str!("../../../python/torch_reference.py")),
];

/// Where a bench run reads its reference scripts from; the copies it writes live as long as
/// this value.
#[derive(Default)]
pub struct References {
    written: Option<tempfile::TempDir>,
}

impl References {
    /// `script` itself where it exists (run from the repository, an edited script is the one
    /// that runs); else, for a built-in script's path, its copy, written out with the modules
    /// it imports; else `script` as given, which Python then reports missing.
    pub fn resolve(&mut self, script: &Path) -> Result<PathBuf> {
        if script.exists() || !FILES.iter().any(|(path, _)| Path::new(path) == script) {
            return Ok(script.to_path_buf());
        }
        let dir = match &mut self.written {
            Some(dir) => dir,
            None => {
                let dir = tempfile::Builder::new().prefix("molclip-references").tempdir()?;
                for (path, text) in FILES {
                    let file = dir.path().join(path);
                    std::fs::create_dir_all(file.parent().expect("a script's path has a folder"))?;
                    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
                }
                self.written.insert(dir)
            }
        };
        Ok(dir.path().join(script))
    }

    /// [`Self::resolve`], unless the reference is skipped (`--no-reference`).
    pub fn unless(&mut self, skipped: bool, script: &Path) -> Result<Option<PathBuf>> {
        (!skipped).then(|| self.resolve(script)).transpose()
    }
}
