//! `ferry-appliance`'s integration tests: the real binary driven as an operator and a stock
//! Elastic Agent would, one module per subject. One test binary for the crate (cargo makes one
//! per file in `tests/`): it links once, and `support` is compiled once with every part of it
//! used.

mod actions;
mod appliance;
mod artifacts;
mod audit;
mod checkin;
mod cli;
mod cluster;
mod crash;
mod dashboard;
mod defend;
mod delta;
mod drain;
mod elastic;
mod enroll;
mod haproxy;
mod hostile_agent;
mod hostile_checkin;
mod hostile_import;
mod hostile_rollback;
mod limits;
mod local_user;
mod metrics;
mod parts;
mod registry;
mod secrets;
mod status;
mod support;
mod uploads;
mod wire;
