//! The README's `train` section, run as written: simulate `tiny`, the dry run, the training,
//! the resume, the evaluation and the embedding, each exiting 0, in a folder of its own with
//! the repository's `configs/`.

#[path = "common/readme.rs"]
mod readme;

use std::path::Path;
use std::process::Command;

use readme::{bash_blocks, molclip_args};

#[test]
fn the_train_section_runs_as_written_on_tiny() {
    let readme = readme::readme();
    let block = bash_blocks(&readme)
        .into_iter()
        .find(|b| b.heading.starts_with("`molclip train`"))
        .expect("the README has a `molclip train` section with a bash block");
    let tmp = tempfile::tempdir().unwrap();
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    std::os::unix::fs::symlink(configs.canonicalize().unwrap(), tmp.path().join("configs")).unwrap();
    let mut ran = Vec::new();
    for (line, words) in &block.commands {
        let args =
            molclip_args(words).unwrap_or_else(|| panic!("README line {line}: not a molclip command: {words:?}"));
        let o = Command::new(env!("CARGO_BIN_EXE_molclip")).args(&args).current_dir(tmp.path()).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "README line {line}: molclip {}\n{text}", args.join(" "));
        let out = args.iter().position(|a| a == "--out").map(|i| tmp.path().join(&args[i + 1]));
        if args.iter().any(|a| a == "--dry-run") {
            let out = out.expect("a dry run names its --out");
            assert!(!out.exists(), "README line {line}: the dry run wrote {}", out.display());
            assert!(text.contains("stage 2 (MoA recognition): 6 MoAs"), "README line {line}: {text}");
        }
        ran.push(args[0].clone());
    }
    assert_eq!(ran, ["simulate", "train", "train", "train", "evaluate", "embed"], "the section's commands");
    let run = tmp.path().join("runs/video-only");
    for written in ["model.safetensors", "metrics.csv", "run.toml", "qg.npy", "qg.csv"] {
        assert!(run.join(written).is_file(), "{written} is missing from the run");
    }
}
