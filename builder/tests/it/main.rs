//! `ferry-builder`'s integration tests: the real `ferry` binary as an operator meets it, one
//! module per subject, in one test binary (cargo makes one per file in `tests/`).

mod artifacts;
mod cli;
mod defend;
mod delta;
mod integrations;
mod parts;
mod policy_secrets;
mod policy_warnings;
mod support;
