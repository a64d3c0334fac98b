//! Why a build run failed: the builder's own error, apart from the
//! store's, so that the store's [`Error`](crate::Error) knows nothing of
//! builds and a build run's caller matches on what only builds report.

use super::{BuildFailure, FailureKind};

/// Why a build run ([`Builder::build`](super::Builder::build)) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The run was interrupted ([`Interrupt`](super::Interrupt)): running
    /// builds were killed and cleaned up, nothing was registered half.
    #[error("interrupted: running builds were stopped and their work removed")]
    Interrupted,
    /// Builds failed; each failure says which derivation and why.
    #[error("{}", render_failures(.0))]
    BuildFailed(Vec<BuildFailure>),
    /// Builds must be sandboxed and this machine cannot.
    #[error(
        "cannot sandbox builds here: {0} (allow unsandboxed builds explicitly to build anyway)"
    )]
    SandboxUnavailable(String),
    /// The store failed while planning, fetching or registering (the
    /// error names its path).
    #[error(transparent)]
    Store(#[from] crate::error::Error),
}

fn render_failures(failures: &[BuildFailure]) -> String {
    let direct: Vec<String> = failures
        .iter()
        .filter(|f| !matches!(f.kind, FailureKind::DependencyFailed(_)))
        .map(|f| f.to_string())
        .collect();
    let skipped = failures.len() - direct.len();
    let mut text = format!(
        "{} build{} failed",
        direct.len(),
        if direct.len() == 1 { "" } else { "s" }
    );
    if skipped > 0 {
        text.push_str(&format!(" ({skipped} dependent jobs not attempted)"));
    }
    for d in direct {
        text.push('\n');
        text.push_str(&d);
    }
    text
}
