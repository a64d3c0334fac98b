//! The system module's options as Rust structs, and their typed keys.
//!
//! ```
//! use bigtop_eval::module::{Config, Module};
//! use bigtop_eval::system::{self, Restart, ETC, SERVICES, USERS};
//! let host = Module::new("host", |m| {
//!     m.import(&system::module());
//!     m.set(system::NAME, "web1");
//!     m.set(ETC.entry("motd").text, "welcome\n");
//!     m.set(USERS.entry("web").uid, 990);
//!     let web = SERVICES.entry("web");
//!     m.set(web.argv, ["/bin/sh", "-c", "sleep 1000"]);
//!     m.set(web.user, "web");
//!     m.set(web.restart, Restart::Always);
//! });
//! let cfg = Config::eval(&[host], None)?;
//! assert_eq!(cfg.read(USERS.entry("web"))?.uid, Some(990));
//! assert_eq!(cfg.read(SERVICES.entry("web").restart)?, Restart::Always);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;

use crate::drv::{Drv, Str};
use crate::module::{types, FromValue, IntoValue, Opt, OptionValue, Value};
use crate::Options;

use super::{OnChange, Restart};

/// The largest user or group id: `(uid_t)-1` means "none" to the kernel.
pub(crate) const ID_MAX: i64 = u32::MAX as i64 - 1;

/// `system.name`: the host name.
pub const NAME: Opt<String> = Opt::new("system.name");
/// `system.release`: the release the system is built from.
pub const RELEASE: Opt<Option<String>> = Opt::new("system.release");
/// `system.packages`: packages joined into `sw`.
pub const PACKAGES: Opt<Vec<Drv>> = Opt::new("system.packages");
/// `etc`: files of /etc, by path below it.
pub const ETC: Opt<BTreeMap<String, EtcFile>> = Opt::new("etc");
/// `users.users`: accounts, by name.
pub const USERS: Opt<BTreeMap<String, User>> = Opt::new("users.users");
/// `users.groups`: groups, by name.
pub const GROUPS: Opt<BTreeMap<String, Group>> = Opt::new("users.groups");
/// `system.activation`: activation steps, by name.
pub const ACTIVATION: Opt<BTreeMap<String, ActivationStep>> = Opt::new("system.activation");
/// `system.services`: services, by name.
pub const SERVICES: Opt<BTreeMap<String, ServiceOptions>> = Opt::new("system.services");

fn name_pattern(pattern: &str) -> types::Type {
    types::matching(pattern).expect("a valid pattern")
}

/// A file of /etc: exactly one of `text` and `source`.
#[derive(Options, Debug, Clone, PartialEq, Eq)]
pub struct EtcFile {
    /// The file's contents.
    #[option(ty = types::optional(types::lines()))]
    pub text: Option<Str>,
    /// A file to link instead (a package's, usually).
    #[option(ty = types::optional(types::path()))]
    pub source: Option<Str>,
    /// Its mode, when activation copies it.
    #[option(ty = name_pattern("^[0-7]{4}$"), default = "0444")]
    pub mode: String,
    /// Its owner.
    #[option(ty = types::non_empty_str(), default = "root")]
    pub user: String,
    /// Its group.
    #[option(ty = types::non_empty_str(), default = "root")]
    pub group: String,
}

/// An account.
#[derive(Options, Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its number; activation picks one if null.
    #[option(ty = types::optional(types::between(0, ID_MAX)))]
    pub uid: Option<u32>,
    /// Its primary group.
    #[option(ty = types::non_empty_str(), default = "nogroup")]
    pub group: String,
    /// Its home directory.
    #[option(ty = types::path(), default = "/var/empty")]
    pub home: String,
    /// Its login shell.
    #[option(ty = types::path(), default = "/usr/sbin/nologin")]
    pub shell: String,
    /// A service account rather than a person's.
    #[option(default = true)]
    pub system: bool,
    /// What it is for (the GECOS field).
    #[option(ty = types::single_line_str(), default = "")]
    pub description: String,
}

/// A group.
#[derive(Options, Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its number; activation picks one if null.
    #[option(ty = types::optional(types::between(0, ID_MAX)))]
    pub gid: Option<u32>,
}

/// An activation step.
#[derive(Options, Debug, Clone, PartialEq, Eq)]
pub struct ActivationStep {
    /// Shell commands; run at every switch, so they must be idempotent.
    #[option(ty = types::lines(), required)]
    pub script: Str,
    /// Steps that run before this one.
    pub after: Vec<String>,
}

/// When a service counts as started.
#[derive(Options, Debug, Clone, PartialEq, Eq)]
pub struct ReadyOptions {
    /// A TCP port on 127.0.0.1 that accepts a connection.
    #[option(ty = types::optional(types::port()))]
    pub tcp_port: Option<u16>,
    /// A command that exits 0.
    pub command: Option<Vec<Str>>,
    /// How long to wait, in milliseconds.
    #[option(ty = types::unsigned(), default = 30_000)]
    pub timeout_ms: u64,
    /// It tells systemd itself when it is ready (`sd_notify`): its unit
    /// is `Type=notify`. Under s6 the checks above are used.
    pub notify: bool,
}

/// A service's resource limits, for every init system.
#[derive(Options, Debug, Clone, PartialEq, Eq)]
pub struct LimitsOptions {
    /// The most files it may have open (systemd's `LimitNOFILE`, s6's
    /// `s6-softlimit -o`).
    pub open_files: Option<u32>,
    /// The most processes its user may run (`LimitNPROC`,
    /// `s6-softlimit -p`).
    pub processes: Option<u32>,
}

/// What a service's systemd unit gets beyond what bigtop writes.
#[derive(Options, Debug, Clone, PartialEq, Eq)]
pub struct SystemdOptions {
    /// Keys of the `[Unit]` section (`StartLimitBurst = "5"`).
    #[option(ty = types::map(types::single_line_str()))]
    pub unit: BTreeMap<String, String>,
    /// Keys of the `[Service]` section (`LimitMEMLOCK = "infinity"`,
    /// `ProtectSystem = "strict"`), written after bigtop's own, so that
    /// one of these replaces bigtop's value for a key systemd reads once.
    #[option(ty = types::map(types::single_line_str()))]
    pub service: BTreeMap<String, String>,
}

/// A service, independent of the init system: what a module defines at
/// `system.services.<name>`.
#[derive(Options, Debug, Clone, PartialEq, Eq)]
pub struct ServiceOptions {
    /// Whether it runs.
    #[option(default = true)]
    pub enable: bool,
    /// What it is.
    #[option(ty = types::single_line_str(), default = "")]
    pub description: String,
    /// The program and its arguments.
    #[option(required)]
    pub argv: Vec<Str>,
    /// Its environment (nothing else is inherited).
    pub environment: BTreeMap<String, Str>,
    /// Where it runs.
    #[option(ty = types::optional(types::path()))]
    pub working_directory: Option<Str>,
    /// The user it runs as.
    #[option(ty = types::non_empty_str(), default = "root")]
    pub user: String,
    /// Its group.
    #[option(ty = types::non_empty_str(), default = "root")]
    pub group: String,
    /// Services that must run for it to run (started before it). Under
    /// systemd, a unit of another kind (`network-online.target`) may be
    /// named too; other init systems leave those out.
    pub requires: Vec<String>,
    /// Services started before it when both are started (and, under
    /// systemd, other units such as `network-online.target`).
    pub after: Vec<String>,
    /// When it is restarted.
    #[option(default = Restart::OnFailure)]
    pub restart: Restart,
    /// How long to wait before restarting it, in milliseconds.
    #[option(ty = types::unsigned(), default = 1000)]
    pub restart_delay_ms: u64,
    /// The command that makes it reload its configuration.
    pub reload: Option<Vec<Str>>,
    /// What a change of its definition does to it when running.
    #[option(default = OnChange::Restart)]
    pub on_change: OnChange,
    /// Anything whose change must restart (or reload) it though its
    /// definition is the same: typically its configuration files' texts.
    pub restart_triggers: Vec<Str>,
    /// When it counts as started.
    pub ready: Option<ReadyOptions>,
    /// Its resource limits.
    pub limits: LimitsOptions,
    /// Settings for systemd only.
    pub systemd: SystemdOptions,
}

/// An enum of the manifest as an option of one of its names.
macro_rules! enum_option {
    ($t:ty { $($v:ident = $s:literal),* $(,)? }) => {
        impl IntoValue for $t {
            fn into_value(self) -> Value {
                match self { $(<$t>::$v => Value::from($s),)* }
            }
        }
        impl FromValue for $t {
            fn from_value(v: Value) -> Result<Self, String> {
                Self::from_value_ref(&v)
            }
            fn from_value_ref(v: &Value) -> Result<Self, String> {
                match v {
                    $(Value::Str(s) if s.as_str() == $s => Ok(<$t>::$v),)*
                    other => Err(format!(
                        "expected one of {}, got {other}",
                        [$($s),*].join(", ")
                    )),
                }
            }
        }
        crate::__defines_itself!($t);
        impl OptionValue for $t {
            type Key = Opt<$t>;
            fn option_type() -> types::Type {
                types::one_of_str([$($s),*])
            }
        }
    };
}

enum_option!(Restart {
    Always = "always",
    OnFailure = "on-failure",
    Never = "never",
});
enum_option!(OnChange {
    Restart = "restart",
    Reload = "reload",
    Nothing = "nothing",
});
