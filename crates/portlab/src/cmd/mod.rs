//! One module per subcommand: its clap `Args` and its `run` function.

pub mod model;
pub mod ports;
pub mod simulate;
