//! Concurrent writers, interruptions and leftovers, as a user meets them: one writer per
//! output (the holder's pid named), Ctrl-C leaves no staging folder, the leftovers of a
//! killed simulation are cleaned and reported, and an OS error is said once.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use molclip_core::OutputLock;

fn molclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_molclip")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_second_writer_of_a_dataset_a_run_or_a_demo_is_refused_naming_the_holders_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let holder = format!("(pid {})", std::process::id());
    // A simulation in progress holds `.NAME.lock` beside its output.
    let data = tmp.path().join("data");
    let held = OutputLock::acquire(&tmp.path().join(".data.lock"), &data, "a dataset there", true).unwrap();
    let o = molclip(&["simulate", "--preset", "tiny", "--out", s(&data), "--quiet"]);
    assert!(!o.status.success() && text(&o).contains(&holder), "{}", text(&o));
    assert!(!data.exists());
    drop(held);
    let o = molclip(&["simulate", "--preset", "tiny", "--out", s(&data), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!tmp.path().join(".data.lock").exists(), "the lock beside the dataset goes with its holder");
    // A training holds RUN/.lock.
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let held = OutputLock::acquire(&run.join(".lock"), &run, "into this run folder", false).unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/video-only.toml");
    let o = molclip(&[
        "train",
        "--config",
        s(&config),
        "--data",
        s(&data),
        "--out",
        s(&run),
        "--epochs",
        "1",
        "--set",
        "data.sampler.p=4",
        "--quiet",
    ]);
    assert!(!o.status.success() && text(&o).contains(&holder), "{}", text(&o));
    assert!(!run.join("run.toml").exists());
    drop(held);
    // A demo holds OUT/.lock.
    let demo = tmp.path().join("demo");
    std::fs::create_dir_all(&demo).unwrap();
    let _held = OutputLock::acquire(&demo.join(".lock"), &demo, "a demo there", false).unwrap();
    let o = molclip(&["demo", "--quick", "--out", s(&demo), "--quiet"]);
    assert!(!o.status.success() && text(&o).contains(&holder), "{}", text(&o));
    assert!(!demo.join("data").exists());
}

#[test]
fn ctrl_c_during_a_simulation_removes_its_staging_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("big");
    let mut child = Command::new(env!("CARGO_BIN_EXE_molclip"))
        .args(["simulate", "--preset", "demo", "--out", s(&out), "--quiet"])
        .spawn()
        .unwrap();
    let staging = tmp.path().join(format!(".big.partial-{}", child.id()));
    let start = Instant::now();
    // Once the staging folder holds frames, the simulation is under way.
    while !staging.join("annotation.csv").exists() && std::fs::read_dir(&staging).map_or(0, |d| d.count()) < 2 {
        assert!(start.elapsed() < Duration::from_secs(60), "the simulation never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) with a child's pid and a valid signal number touches no memory.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(!staging.exists(), "the staging folder was left behind");
    assert!(!out.exists());
}

#[test]
fn leftovers_of_a_killed_simulation_are_removed_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny");
    let stale = tmp.path().join(".tiny.partial-999999999");
    std::fs::create_dir_all(stale.join("l1")).unwrap();
    std::fs::write(stale.join("l1").join("frame.png"), b"half").unwrap();
    let o = molclip(&["simulate", "--preset", "tiny", "--out", s(&out), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!stale.exists());
    assert!(
        text(&o).contains(&format!("removed {}, left by an interrupted simulation", stale.display())),
        "{}",
        text(&o)
    );
}

#[test]
fn an_os_error_is_said_once() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, b"not a folder").unwrap();
    let o = molclip(&["simulate", "--preset", "tiny", "--out", s(&file.join("sub")), "--quiet"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert_eq!(t.matches("(os error").count(), 1, "{t}");
    assert!(t.contains(s(&file)), "{t}");
}

#[test]
fn the_demo_never_replaces_a_folder_molclip_did_not_write() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = tmp.path().join("demo");
    let theirs = demo.join("runs").join("single-frame");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("notes.txt"), b"mine").unwrap();
    let o = molclip(&["demo", "--quick", "--out", s(&demo), "--quiet"]);
    assert!(!o.status.success() && text(&o).contains("not a molclip run (no run.toml)"), "{}", text(&o));
    assert_eq!(std::fs::read(theirs.join("notes.txt")).unwrap(), b"mine");
}
