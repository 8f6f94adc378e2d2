//! `ferry-manifests`' integration tests: real and forged bundles through the public API, one
//! module per subject, in one test binary (cargo makes one per file in `tests/`).

mod delta;
mod hostile;
mod parts;
mod replaced;
mod roundtrip;
mod support;
