//! ecogate: the gateway for the 环保门禁电子台账 (environmental gate control and e-ledger).
//!
//! A site is described in TOML (devices, lanes and their state machines, access policy,
//! storage, uplinks); [`config`] loads it in two phases (raw → validated [`config::Plan`]), the
//! [`lane`] engine runs one machine per lane, [`policy`] decides who may pass.

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod decide;
pub mod demo;
pub mod devices;
pub mod gateway;
pub mod health;
pub mod lane;
pub mod ledger;
pub mod logging;
pub mod policy;
pub mod recorder;
pub mod registry;
pub mod regulator;
pub mod report;
pub mod runtime;
pub mod sim_cli;
pub mod time;
pub mod uplink;
pub mod vehicle;
