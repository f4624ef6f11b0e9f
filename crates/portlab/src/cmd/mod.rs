//! One module per subcommand: its clap `Args` and its `run` function.

pub mod doctor;
pub mod load;
pub mod load_telemetry;
pub mod model;
pub mod ports;
pub mod proxy;
pub mod reproduce;
pub mod serve;
pub mod simulate;
pub mod trace;
