//! One module per subcommand: its clap `Args` and its `run` function.

pub mod analyze;
pub mod docs;
pub mod doctor;
pub mod exporter;
pub mod hey;
pub mod load;
pub mod load_agent;
pub mod load_telemetry;
pub mod merge;
pub mod model;
pub mod model_nat;
pub mod nat_tool;
pub mod nat_view;
pub mod ports;
pub mod proxy;
pub mod reproduce;
pub mod reproduce_nat;
pub mod serve;
pub mod simulate;
pub mod trace;
