//! Classification of upstream-leg failures by errno, so that a proxy whose upstream leg runs
//! out of ephemeral ports says so instead of printing an opaque message.
//!
//! The type is the workspace's one failure taxonomy, [`portlab_errors::ErrorClass`] (the load
//! engine's `ErrorClass` is the same type); [`UpstreamErrorClass`] remains as its name on the
//! upstream leg. Stats maps keyed by it serialize with snake_case keys
//! (`"addr_not_available"`) through [`portlab_errors::snake_case_keys`], as they always have.

/// Why a connect (or relay) on the upstream leg failed, derived from the errno: the shared
/// [`portlab_errors::ErrorClass`].
pub type UpstreamErrorClass = portlab_errors::ErrorClass;
