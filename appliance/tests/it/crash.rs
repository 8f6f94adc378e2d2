//! Crash injection from outside: `import` killed with SIGKILL at two dozen moments spread over
//! its run (the `FERRY_CRASH_AT` points in appliance.rs stop it at named steps; these land
//! wherever the clock says). After each kill exactly one complete release is active, fsck is
//! clean, staging is emptied by the next command, and the import can simply be run again.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{Fixture, VERSIONS, assert_ok, stderr};

/// What a killed import left behind, read from the data directory before anything cleans it.
fn leftovers(data: &Path) -> &'static str {
    let staged = std::fs::read_dir(data.join("staging")).unwrap().count();
    let release_dir = data.join("releases/site-2").exists();
    match (staged, release_dir) {
        (0, false) => "nothing (verifying, or done)",
        (_, false) => "files in staging",
        (_, true) => "release folder written",
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let status =
        ferry_manifests::test_tools::tool("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

#[test]
fn an_import_killed_at_any_moment_leaves_one_whole_release_active() {
    const POINTS: u32 = 24;
    let f = Fixture::new();
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let (data, saved) = (f.path("data"), f.path("data-at-1"));
    copy_dir(&data, &saved);
    // Large enough that the import takes a while, with every step (signature pass, extraction,
    // blob moves, commit, clean-up) a visible share of it.
    let bundle = f.bundle_full(2, VERSIONS[1], Fixture::later(), &f.key, 48 << 20);

    // How long an undisturbed import takes here (the faster of two, with the file cached).
    let mut full = Duration::MAX;
    for _ in 0..2 {
        copy_dir(&saved, &data);
        let started = Instant::now();
        assert_ok(&f.run(&[&"import", &bundle]));
        full = full.min(started.elapsed());
    }

    let mut outcomes = Vec::new();
    for i in 1..=POINTS {
        copy_dir(&saved, &data);
        let at = full * i / (POINTS + 1);
        let mut child = f
            .appliance(&[&"import", &bundle, &"--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let finished = child.try_wait().unwrap().is_some();
        child.kill().unwrap_or(()); // SIGKILL; a finished child is simply reaped
        let status = child.wait().unwrap();
        let killed = !finished && status.code().is_none();
        let left = leftovers(&data);

        // The next command cleans up; exactly one whole release is active, and fsck says so.
        let (active, all) = f.releases();
        assert!(matches!(active, Some(1 | 2)), "kill {i}: active release {active:?}");
        assert!(all.contains(&1), "kill {i}: release 1 is gone: {all:?}");
        let o = f.run(&[&"fsck"]);
        assert_ok(&o);
        assert_eq!(
            std::fs::read_dir(data.join("staging")).unwrap().count(),
            0,
            "kill {i}: staging not emptied"
        );
        // Running the import again finishes the job, or is refused as the replay it now is.
        let o = f.run(&[&"import", &bundle]);
        match active {
            Some(1) => assert_ok(&o),
            _ => assert!(stderr(&o).contains("replay"), "kill {i}: {}", stderr(&o)),
        }
        assert_eq!(f.releases().0, Some(2), "kill {i}");
        assert_ok(&f.run(&[&"fsck"]));
        outcomes.push((at, killed, left, active.unwrap()));
    }

    eprintln!("undisturbed import: {full:?}");
    eprintln!("{:>10}  {:<7}  {:<28}  active after", "kill at", "killed", "left behind");
    for (at, killed, left, active) in &outcomes {
        eprintln!("{:>10.0?}  {killed:<7}  {left:<28}  {active}", at);
    }
    // The first kill comes a 25th of an import after the start: one at least lands mid-import,
    // or this test would show nothing. (Where the others land is printed, not asserted: the
    // machine's load moves them.)
    assert!(outcomes.iter().any(|o| o.1), "no kill landed mid-import");
}
