//! The system manifest: `manifest.json` in a built toplevel, what the
//! evaluator writes and the activation engine diffs.
//!
//! It is the contract between the two halves of bigtop: the evaluator
//! (`bigtop_eval::system::toplevel`) writes it, the activation engine
//! (`bigtop_activate`) reads it from a machine's store, possibly years
//! later and written by another version. [`FORMAT_VERSION`] says which
//! format a manifest uses; a reader refuses a newer one rather than
//! misread it, and fields added within a version are optional.
//!
//! ```
//! use bigtop_core::manifest::{Manifest, FORMAT_VERSION};
//! let m = Manifest::new("web1");
//! assert_eq!(m.version, FORMAT_VERSION);
//! assert!(m.services.is_empty());
//! ```

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The manifest format this version of bigtop writes and the newest it
/// reads.
pub const FORMAT_VERSION: u32 = 1;

/// A built system: what activation puts on a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The format ([`FORMAT_VERSION`] when written by this bigtop).
    pub version: u32,
    /// The machine's name (its host name).
    pub name: String,
    /// The release of the package set the machine was evaluated from (a
    /// fleet's release name), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Services, by name.
    #[serde(default)]
    pub services: BTreeMap<String, ManifestService>,
    /// Accounts, by name.
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    /// Groups, by name.
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
    /// Files of /etc, by path below it.
    #[serde(default)]
    pub etc: BTreeMap<String, EtcEntry>,
    /// Activation steps.
    #[serde(default)]
    pub activation: Activation,
    /// The system packages joined (a store path).
    #[serde(default)]
    pub sw: String,
}

impl Manifest {
    /// An empty system named `name`, in the current format.
    pub fn new(name: impl Into<String>) -> Self {
        Manifest {
            version: FORMAT_VERSION,
            name: name.into(),
            release: None,
            services: BTreeMap::new(),
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            etc: BTreeMap::new(),
            activation: Activation::default(),
            sw: String::new(),
        }
    }
}

/// How a service is restarted when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Whenever it stops.
    Always,
    /// When it stops with a failure.
    OnFailure,
    /// Never.
    Never,
}

/// What a change of a service's definition does to the running service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnChange {
    /// Stop the old one, start the new one.
    Restart,
    /// Run the reload command.
    Reload,
    /// Leave it running.
    Nothing,
}

/// A readiness check: the service counts as started once it passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// A TCP port on 127.0.0.1 that accepts a connection.
    pub tcp_port: Option<u16>,
    /// A command that exits 0.
    pub command: Option<Vec<String>>,
    /// How long to wait, in milliseconds.
    pub timeout_ms: u64,
    /// The service tells systemd itself when it is ready (`sd_notify`):
    /// its unit is `Type=notify`. Other init systems use the checks above.
    #[serde(default, skip_serializing_if = "is_false")]
    pub notify: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Resource limits of a service, for every init system (systemd's
/// `LimitNOFILE=` and `LimitNPROC=`, s6's `s6-softlimit`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The most files it may have open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u32>,
    /// The most processes its user may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u32>,
}

impl Limits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// A service, independent of the init system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// What it is.
    pub description: String,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Its environment (nothing else is inherited).
    pub environment: BTreeMap<String, String>,
    /// Where it runs.
    pub working_directory: Option<String>,
    /// The user it runs as.
    pub user: String,
    /// Its group.
    pub group: String,
    /// Services that must run for it to run (started before it).
    pub requires: Vec<String>,
    /// Services started before it when both are started.
    pub after: Vec<String>,
    /// When it is restarted.
    pub restart: Restart,
    /// How long to wait before restarting it, in milliseconds.
    pub restart_delay_ms: u64,
    /// The command that makes it reload its configuration.
    pub reload: Option<Vec<String>>,
    /// What a change does.
    pub on_change: OnChange,
    /// Anything whose change must restart (or reload) it though its
    /// definition is the same: typically its configuration files' paths.
    pub restart_triggers: Vec<String>,
    /// When it counts as started.
    pub ready: Option<Ready>,
    /// Its resource limits.
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    /// Keys added to its systemd unit's `[Unit]` section, after those
    /// bigtop writes (`StartLimitBurst`, …): the way to anything systemd
    /// has and this description does not.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub systemd_unit: BTreeMap<String, String>,
    /// Keys added to its systemd unit's `[Service]` section, after those
    /// bigtop writes (`LimitMEMLOCK`, `ProtectSystem`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub systemd_service: BTreeMap<String, String>,
}

/// A service as the manifest records it: its definition and the hash of
/// that definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestService {
    /// Its definition.
    #[serde(flatten)]
    pub service: Service,
    /// The hash of its whole definition: any change to it changes this.
    pub hash: String,
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Its number; activation allocates one when `None`.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Its primary group.
    pub group: String,
    /// Its home directory.
    pub home: String,
    /// Its login shell.
    pub shell: String,
    /// A service account (uid allocated from the system range).
    #[serde(default)]
    pub system: bool,
    /// Its description (the GECOS field).
    #[serde(default)]
    pub description: String,
}

/// A group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Its number; activation allocates one when `None`.
    #[serde(default)]
    pub gid: Option<u32>,
}

/// A file of /etc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcEntry {
    /// Its mode, octal (`"0444"`); a mode other than `0444`, or an owner
    /// other than root, makes activation copy the file instead of linking
    /// it.
    pub mode: String,
    /// Its owner.
    pub user: String,
    /// Its group.
    pub group: String,
    /// The hash of its text, when it is written from text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// The file it links to, when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl EtcEntry {
    /// Whether activation writes a copy (mode or owner given) rather than
    /// a symlink into `/etc/static`.
    pub fn is_copied(&self) -> bool {
        self.mode != "0444" || self.user != "root" || self.group != "root"
    }
}

/// The activation steps and the order they run in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    /// Step names, each after the steps it names.
    pub order: Vec<String>,
    /// Steps, by name.
    pub steps: BTreeMap<String, Step>,
}

/// An activation step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Its shell commands.
    pub script: String,
    /// The steps before it.
    pub after: Vec<String>,
}

/// Compares two release names as versions: runs of digits by number,
/// other runs by text, so that `2026.11` is newer than `2026.9` and
/// `2026.11` newer than `2026.11-rc1`'s prefix `2026`. A release that is
/// a prefix of the other is older (`2026` < `2026.1`), except that a
/// suffix starting with `-` marks a pre-release (`2026.11-rc1` <
/// `2026.11`).
pub fn compare_releases(a: &str, b: &str) -> Ordering {
    let (a_main, a_pre) = split_pre(a);
    let (b_main, b_pre) = split_pre(b);
    match compare_runs(a_main, b_main) {
        Ordering::Equal => match (a_pre, b_pre) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => compare_runs(x, y),
        },
        o => o,
    }
}

fn split_pre(s: &str) -> (&str, Option<&str>) {
    match s.split_once('-') {
        Some((main, pre)) => (main, Some(pre)),
        None => (s, None),
    }
}

/// Runs of digits or of other characters, separators (`.`, `_`, `+`)
/// dropped.
fn runs(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches(['.', '_', '+']);
        let first = rest.chars().next()?;
        let digit = first.is_ascii_digit();
        let end = rest
            .find(|c: char| c.is_ascii_digit() != digit || matches!(c, '.' | '_' | '+'))
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        rest = tail;
        Some(run)
    })
}

fn compare_runs(a: &str, b: &str) -> Ordering {
    let mut x = runs(a);
    let mut y = runs(b);
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) => {
                let o = match (p.parse::<u128>(), q.parse::<u128>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    // A number is newer than a word at the same place
                    // (`1.0.1` > `1.0.beta`).
                    (Ok(_), Err(_)) => Ordering::Greater,
                    (Err(_), Ok(_)) => Ordering::Less,
                    (Err(_), Err(_)) => p.cmp(q),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_compare_as_versions() {
        use Ordering::*;
        for (a, b, o) in [
            ("2026.11", "2026.9", Greater),
            ("2025.05", "2026.01", Less),
            ("2026.11", "2026.11", Equal),
            ("2026", "2026.1", Less),
            ("2026.11-rc1", "2026.11", Less),
            ("2026.11-rc2", "2026.11-rc10", Less),
            ("1.0.1", "1.0.beta", Greater),
            ("v2", "v10", Less),
            ("lts", "lts", Equal),
            ("99999999999999999999999999", "1", Greater),
        ] {
            assert_eq!(compare_releases(a, b), o, "{a} vs {b}");
            assert_eq!(compare_releases(b, a), o.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn copied_etc_entries_are_those_with_a_mode_or_owner() {
        let e = |mode: &str, user: &str| EtcEntry {
            mode: mode.into(),
            user: user.into(),
            group: "root".into(),
            hash: None,
            source: None,
        };
        assert!(!e("0444", "root").is_copied());
        assert!(e("0600", "root").is_copied());
        assert!(e("0444", "nginx").is_copied());
    }
}
