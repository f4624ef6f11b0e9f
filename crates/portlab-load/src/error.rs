//! Failure classes come from `portlab-errors` (one taxonomy for the engine, the server and the
//! proxies); this module adds the engine's own [`Phase`] of a request attempt.

use serde::Serialize;

pub use portlab_errors::{ErrorClass, Side};

/// Where in a request attempt the failure happened.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// socket(), bind() (with `--source-ip`), connect(), a proxy's CONNECT tunnel or the TLS
    /// handshake.
    Connect,
    /// Writing the request.
    Write,
    /// Waiting for or reading the response.
    Read,
}

impl Phase {
    /// All phases, in the order the report lists them.
    pub const ALL: [Phase; 3] = [Phase::Connect, Phase::Write, Phase::Read];

    pub(crate) fn index(self) -> usize {
        match self {
            Phase::Connect => 0,
            Phase::Write => 1,
            Phase::Read => 2,
        }
    }
}
