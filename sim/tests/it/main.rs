//! `ferry-sim`'s integration tests: the real binary, one module per subcommand tested here (the
//! journeys in `tests/` drive the others against a real appliance). Having them also makes
//! `cargo test --workspace` build the binary, which the journeys run.

mod fake_mirror;
