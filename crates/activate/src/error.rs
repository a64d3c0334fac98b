//! What can go wrong when activating a machine.

use std::path::PathBuf;

use crate::fs::IoError;

/// An activation error: each names the machine, system, file or service
/// it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The machine's store cannot be opened or read.
    #[error("the store of the machine at `{root}`")]
    Store {
        /// The machine's root.
        root: PathBuf,
        /// The store's error.
        #[source]
        source: Box<bigtop_store::Error>,
    },
    /// A path given as a toplevel is not one the machine can activate.
    #[error("`{toplevel}` is not a system toplevel in the machine's store: {reason}")]
    NotAToplevel {
        /// The path as given.
        toplevel: String,
        /// Why not.
        reason: String,
    },
    /// A toplevel's manifest cannot be read.
    #[error("the manifest of `{toplevel}`: {reason}")]
    Manifest {
        /// The toplevel.
        toplevel: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Another activation holds the machine's lock.
    #[error("another activation is running on the machine at `{root}`: {holder}")]
    Locked {
        /// The machine's root.
        root: PathBuf,
        /// Who holds the lock, as it wrote itself into the lock file.
        holder: String,
    },
    /// A generation that does not exist.
    #[error("the machine at `{root}` has no generation {number}")]
    NoGeneration {
        /// The machine's root.
        root: PathBuf,
        /// The generation asked for.
        number: u64,
    },
    /// A record of activation's state is unreadable or wrong.
    #[error("`{path}`: {reason}")]
    Record {
        /// The record (or the file it describes).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A container cannot be started, entered or stopped.
    #[error("the container of the machine at `{root}`: {reason}")]
    Container {
        /// The machine's root.
        root: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A service manager failed to do what it was asked.
    #[error("service `{service}`: {reason}")]
    Service {
        /// The service.
        service: String,
        /// What failed.
        reason: String,
    },
    /// The new system is built from an older release than the running
    /// one.
    #[error("the new system's release `{to}` is older than the running `{from}`: pass --allow-downgrade to switch anyway")]
    Downgrade {
        /// The running release.
        from: String,
        /// The new system's release.
        to: String,
    },
    /// An activation step failed.
    #[error("activation step `{step}` failed ({status}); its last output:\n{}", output.join("\n"))]
    StepFailed {
        /// The step.
        step: String,
        /// How it ended.
        status: String,
        /// The last lines it printed.
        output: Vec<String>,
    },
    /// A service did not become ready after a switch.
    #[error("{}{}", not_ready(failure), rolled_back_text(rolled_back.as_deref(), rollback_error.as_deref()))]
    NotReady {
        /// Which service, its check, its log.
        failure: Box<NotReady>,
        /// The toplevel the machine was rolled back to, if it was.
        rolled_back: Option<String>,
        /// Why the rollback failed, if it did.
        rollback_error: Option<String>,
    },
    /// An activation failed part way.
    #[error("{}", match (rolled_back, rollback_error) {
        (Some(to), _) => format!("the activation failed; the machine was rolled back to `{to}`"),
        (None, Some(e)) => format!("the activation failed, and rolling back failed too: {e}"),
        (None, None) => "the activation failed; the machine was left as the failure left it".to_owned(),
    })]
    Failed {
        /// What failed.
        #[source]
        source: Box<Error>,
        /// The toplevel the machine was rolled back to, if it was.
        rolled_back: Option<String>,
        /// Why the rollback failed, if it did.
        rollback_error: Option<String>,
    },
    /// Users and groups cannot be applied.
    #[error(transparent)]
    Users(#[from] crate::users::Error),
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// A service that did not become ready.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NotReady {
    /// The service.
    pub service: String,
    /// Its check, described.
    pub check: String,
    /// The last lines of its log.
    pub log_tail: Vec<String>,
}

fn not_ready(f: &NotReady) -> String {
    let mut s = format!("service `{}` did not become ready: {}", f.service, f.check);
    if f.log_tail.is_empty() {
        s.push_str("; its log is empty");
    } else {
        s.push_str("; the end of its log:");
        for l in &f.log_tail {
            s.push_str("\n  ");
            s.push_str(l);
        }
    }
    s
}

fn rolled_back_text(to: Option<&str>, error: Option<&str>) -> String {
    match (to, error) {
        (Some(to), None) => format!("\nthe machine was rolled back to `{to}`"),
        (Some(to), Some(e)) => format!("\nrolling back to `{to}` failed too: {e}"),
        (None, _) => "\nthe machine was left in the new state".to_owned(),
    }
}
