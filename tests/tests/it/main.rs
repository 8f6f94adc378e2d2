//! The end-to-end journeys across `ferry`, `ferry-appliance` and `ferry-sim`, one module per
//! journey, in one test binary (cargo makes one per file in `tests/`).

mod cli_help;
mod cluster_ha;
mod faults;
mod fleet;
mod flood;
mod integrations;
mod journey;
mod server_crash;
mod support;
