//! `ferry-sim fake-mirror`, as the demo, the benchmarks and the journeys use it: every archive it
//! lists is in Elastic's layout, with a `.sha512` that matches it and an `.asc` that the
//! `GPG-KEY-ferry-demo` it wrote verifies, as `ferry build` and agents check them.

use std::fs;

use ferry_artifacts::{Keyring, Sha512Digest, check_sidecar};
use ferry_testkit::{command, run_ok, stdout};

#[test]
fn every_archive_listed_has_a_matching_sha512_and_a_verified_asc() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = command(env!("CARGO_BIN_EXE_ferry-sim"));
    sim.args(["fake-mirror", "--out"]).arg(dir.path());
    sim.args(["--versions", "9.1.2,9.2.2", "--platforms", "linux-x86_64,windows-x86_64"]);
    let listed = stdout(&run_ok(sim.args(["--size", "1000"])));
    let key = fs::read_to_string(dir.path().join("GPG-KEY-ferry-demo")).unwrap();
    let keyring = Keyring::from_armored(&key, "GPG-KEY-ferry-demo").unwrap();

    let paths: Vec<&str> = listed.lines().collect();
    assert_eq!(paths.len(), 4, "two versions on two platforms: {paths:?}");
    assert!(paths.contains(&"beats/elastic-agent/elastic-agent-9.2.2-windows-x86_64.zip"));
    for path in paths {
        let at = dir.path().join("downloads").join(path);
        let archive = fs::read(&at).unwrap();
        assert_eq!(archive.len(), 1000, "{path}");
        let name = path.rsplit('/').next().unwrap();
        let sha512 = fs::read_to_string(at.with_file_name(format!("{name}.sha512"))).unwrap();
        let digest = Sha512Digest::of_reader(&archive[..]).unwrap();
        check_sidecar(&sha512, "sha512", name, &digest).unwrap();
        let asc = fs::read_to_string(at.with_file_name(format!("{name}.asc"))).unwrap();
        keyring.verify(&asc, "asc", name, &archive[..]).unwrap();
    }
}
