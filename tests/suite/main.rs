//! The one integration-test binary: real processes and real sockets on 127.0.0.1.
//! Each module is one suite; `common` holds the helpers they share.

mod cli;
mod common;
mod config_cli;
mod confinement;
mod coordinator_api;
mod coordinator_restart;
mod deploy;
mod doctor;
mod exact_chain;
mod gpu;
mod guide_script;
mod honest_audits;
mod hostile_coordinator;
mod miner_audits;
mod miner_e2e;
mod miner_faults;
mod openapi;
mod privilege;
mod status;
mod tidy;
mod verified_work;
