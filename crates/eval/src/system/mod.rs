//! The system: services described once for any init system, /etc files,
//! users and groups, system packages and activation steps — declared as
//! options by [`module`] — and the toplevel derivation that holds them.
//!
//! A module adds a service by defining `system.services.<name>` (see
//! [`module`] for every field) and keeps its own options under
//! `services.<name>`, as NixOS modules do. One service extends another
//! the Guix way by defining an entry of an option the receiver declares
//! (every web application adds `services.web.vhosts.<app>`): the receiver
//! owns the merge through the type it declares and what it renders from
//! it.
//!
//! [`toplevel`] builds, from builtin builders only (no process, no
//! sandbox): `etc/` (the /etc tree), `systemd/<name>.service` and
//! `s6/<name>/` (each service rendered for both backends), `sw` (the
//! system packages joined), `activation/<name>` (the steps' scripts), and
//! `manifest.json`: services, users, groups, /etc entries and activation
//! steps, with a content hash per service and per file, which the
//! activation engine diffs.
//!
//! ```
//! use bigtop_eval::module::{Config, Module};
//! use bigtop_eval::drv::Platform;
//! use bigtop_eval::system;
//! let host = Module::new("host", |m| {
//!     m.import(&system::module());
//!     m.define("system.name", "web1");
//!     m.define("etc.motd.text", "welcome\n");
//!     m.define("system.services.hello.argv", vec!["/bin/sh", "-c", "echo hello; sleep 1000"]);
//! });
//! let cfg = Config::eval(&[host], None)?;
//! let top = system::toplevel(&cfg, &Platform::default())?;
//! assert_eq!(top.manifest["services"]["hello"]["on_change"], "restart");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod options;
mod render;

pub use options::{
    ActivationStep, ActivationStepKey, EtcFile, EtcFileKey, Group, GroupKey, LimitsOptions,
    LimitsOptionsKey, ReadyOptions, ReadyOptionsKey, ServiceOptions, ServiceOptionsKey,
    SystemdOptions, SystemdOptionsKey, User, UserKey, ACTIVATION, ETC, GROUPS, NAME, PACKAGES,
    RELEASE, SERVICES, USERS,
};

use std::collections::BTreeMap;

use bigtop_core::manifest::{self, Manifest, ManifestService};

use crate::drv::{Context, Drv, Str};
use crate::module::{types, Config, Error, IntoValue, Module, Value};
use crate::platform::Platform;
use crate::trivial::{self, TreeEntry};

pub use bigtop_core::manifest::{Limits, OnChange, Ready, Restart, Service, Step};
pub use render::{render_s6, render_systemd, S6File};

/// The base system module, `bigtop/system`: declares every option the
/// toplevel reads.
///
/// | option | type |
/// |---|---|
/// | `system.name` | the host name |
/// | `system.release` | the release it is built from, or null |
/// | `system.packages` | packages joined into `sw` |
/// | `etc.<path>` | `text` or `source`, `mode`, `user`, `group` |
/// | `users.users.<name>` | `uid`, `group`, `home`, `shell`, `system`, `description` |
/// | `users.groups.<name>` | `gid` |
/// | `system.activation.<name>` | `script`, `after` (other steps) |
/// | `system.services.<name>` | `enable`, `description`, `argv`, `environment`, `working_directory`, `user`, `group`, `requires`, `after`, `restart`, `restart_delay_ms`, `reload`, `on_change`, `restart_triggers`, `ready` |
///
/// Its assertions check what the toplevel relies on: every service's
/// dependencies, users and groups exist; `etc` entries have exactly one
/// of `text` and `source`; activation steps form no cycle.
pub fn module() -> Module {
    Module::new("bigtop/system", |m| {
        let hostname = types::matching("^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
            .expect("a valid pattern");
        m.option(NAME.path(), hostname, |o| {
            o.description("The host name.");
        });
        m.option(RELEASE.path(), types::optional(types::single_line_str()), |o| {
            o.default(Value::Null).description(
                "The release the system is built from (a fleet defines it): recorded in the manifest, \
                 so that activation can refuse a downgrade and deploy tools can report it.",
            );
        });
        m.declare(PACKAGES, |o| {
            o.description("Packages installed system-wide: joined into `sw`.");
        });
        m.declare(ETC, |o| {
            o.description("Files of /etc, by path below it.");
        });
        m.declare(USERS, |o| {
            o.description("Accounts, by name (`root` always exists).");
        });
        m.declare(GROUPS, |o| {
            o.description("Groups, by name (`root` and `nogroup` always exist).");
        });
        m.declare(ACTIVATION, |o| {
            o.description("Activation steps, by name.");
        });
        m.declare(SERVICES, |o| {
            o.description("Services, by name.");
        });
        // Name lookups read it: without it, glibc cannot list a user's
        // groups (which s6-envuidgid does for every service that runs as
        // a user). A default, so that a module may replace it.
        m.set(
            ETC.entry("nsswitch.conf").text,
            crate::module::default(
                "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nservices: files\n",
            ),
        );
        m.assert_with(|c| {
            let problems = check(c)?;
            Ok((!problems.is_empty()).then(|| problems.join("; ")))
        });
    })
}

/// The enabled services of a configuration, typed.
pub fn services(cfg: &Config) -> Result<BTreeMap<String, Service>, Error> {
    let mut out = BTreeMap::new();
    for name in cfg.keys(SERVICES.path())? {
        if let Some(s) = service_options(cfg, &name)? {
            out.insert(name.clone(), service_of(&name, s));
        }
    }
    Ok(out)
}

/// The options of the service `name`; `None` when disabled. Merged on
/// its own: a broken service does not keep the others from being read.
fn service_options(cfg: &Config, name: &str) -> Result<Option<ServiceOptions>, Error> {
    let s = cfg.read(SERVICES.entry(name))?;
    Ok(s.enable.then_some(s))
}

/// The service as the manifest and the renderers take it.
fn service_of(name: &str, s: ServiceOptions) -> Service {
    let strings = |v: Vec<Str>| v.into_iter().map(|x| x.as_str().to_owned()).collect();
    Service {
        name: name.to_owned(),
        description: s.description,
        argv: strings(s.argv),
        environment: s
            .environment
            .into_iter()
            .map(|(k, v)| (k, v.as_str().to_owned()))
            .collect(),
        working_directory: s.working_directory.map(|w| w.as_str().to_owned()),
        user: s.user,
        group: s.group,
        requires: s.requires,
        after: s.after,
        restart: s.restart,
        restart_delay_ms: s.restart_delay_ms,
        reload: s.reload.map(strings),
        on_change: s.on_change,
        restart_triggers: s
            .restart_triggers
            .iter()
            .map(|t| restart_trigger(t.as_str()))
            .collect(),
        ready: s.ready.map(|r| Ready {
            tcp_port: r.tcp_port,
            command: r.command.map(strings),
            timeout_ms: r.timeout_ms,
            notify: r.notify,
        }),
        limits: Limits {
            open_files: s.limits.open_files,
            processes: s.limits.processes,
        },
        systemd_unit: s.systemd.unit,
        systemd_service: s.systemd.service,
    }
}

/// A restart trigger as the manifest records it: a path as it is (the
/// activation engine restarts the service when the /etc file it names
/// changes), anything else (a configuration file's text, typically) by
/// its content hash, so that the manifest does not hold every service's
/// configuration twice.
fn restart_trigger(t: &str) -> String {
    if t.starts_with('/') && !t.contains('\n') {
        t.to_owned()
    } else {
        content_hash(t.as_bytes())
    }
}

/// What the toplevel relies on and types alone cannot say.
fn check(c: &Config) -> Result<Vec<String>, Error> {
    // Each part is checked even when another cannot be read: what failed
    // to evaluate is reported by its option, and the problems found
    // elsewhere are reported with it.
    let mut problems = Vec::new();
    let mut failed = None;
    for part in [check_accounts, check_etc, check_activation] {
        if let Err(e) = part(c, &mut problems) {
            failed.get_or_insert(e);
        }
    }
    match failed {
        Some(e) if problems.is_empty() => Err(e),
        _ => Ok(problems),
    }
}

fn check_accounts(c: &Config, problems: &mut Vec<String>) -> Result<(), Error> {
    // The services that evaluate: a broken one is reported by its option.
    // All of them read at once where they all evaluate (the usual case),
    // one by one otherwise.
    let services: BTreeMap<String, Service> = match c.read(SERVICES) {
        Ok(all) => all
            .into_iter()
            .filter(|(_, s)| s.enable)
            .map(|(n, s)| {
                let s = service_of(&n, s);
                (n, s)
            })
            .collect(),
        Err(_) => c
            .keys(SERVICES.path())?
            .into_iter()
            .filter_map(|n| {
                let s = service_options(c, &n).ok().flatten()?;
                Some((n.clone(), service_of(&n, s)))
            })
            .collect(),
    };
    let users = c.read(USERS)?;
    let groups = c.read(GROUPS)?;
    let user_ok = |u: &str| u == "root" || users.contains_key(u);
    let group_ok = |g: &str| g == "root" || g == "nogroup" || groups.contains_key(g);
    for s in services.values() {
        if !name_ok(&s.name) {
            problems.push(format!(
                "service name `{}` must be letters, digits, `_`, `.`, `@` and `-`, not starting with a punctuation mark",
                s.name.escape_debug()
            ));
        }
        for who in [&s.user, &s.group] {
            if !name_ok(who) {
                problems.push(format!(
                    "service `{}`: `{}` is not a user or group name",
                    s.name,
                    who.escape_debug()
                ));
            }
        }
        for k in s.environment.keys() {
            let ok = k
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                problems.push(format!(
                    "service `{}`: `{}` is not an environment variable name",
                    s.name,
                    k.escape_debug()
                ));
            }
        }
        if s.argv.is_empty() {
            problems.push(format!("service `{}` has an empty `argv`", s.name));
        }
        for d in s.requires.iter().chain(&s.after) {
            if render::is_systemd_unit(d) {
                if !name_ok(d) {
                    problems.push(format!(
                        "service `{}` depends on `{}`, which is not a unit name",
                        s.name,
                        d.escape_debug()
                    ));
                }
            } else if !services.contains_key(d) {
                problems.push(format!(
                    "service `{}` depends on `{d}`, which is not an enabled service",
                    s.name
                ));
            }
        }
        if !user_ok(&s.user) {
            problems.push(format!(
                "service `{}` runs as user `{}`, which is not in `users.users`",
                s.name, s.user
            ));
        }
        if !group_ok(&s.group) {
            problems.push(format!(
                "service `{}` runs as group `{}`, which is not in `users.groups`",
                s.name, s.group
            ));
        }
        for (k, v) in s.systemd_unit.iter().chain(&s.systemd_service) {
            let ok = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && k.chars().all(|c| c.is_ascii_alphanumeric());
            if !ok {
                problems.push(format!(
                    "service `{}`: `{}` is not a systemd setting name",
                    s.name,
                    k.escape_debug()
                ));
            }
            // Written as given: a control character could end its line
            // (systemd ends lines at `\r` and NUL too) and a trailing
            // backslash would join the next one to it.
            if v.chars().any(char::is_control) || v.ends_with('\\') {
                problems.push(format!(
                    "service `{}`: the systemd setting `{k}` = `{}` holds a control character or ends in a backslash",
                    s.name,
                    v.escape_debug()
                ));
            }
        }
        if s.description.chars().any(char::is_control) {
            problems.push(format!(
                "service `{}`: its description `{}` holds a control character",
                s.name,
                s.description.escape_debug()
            ));
        }
        if s.on_change == OnChange::Reload && s.reload.is_none() {
            problems.push(format!(
                "service `{}` reloads on change but has no `reload` command",
                s.name
            ));
        }
    }
    for (name, u) in &users {
        if !group_ok(&u.group) {
            problems.push(format!(
                "user `{name}` has group `{}`, which is not in `users.groups`",
                u.group
            ));
        }
    }
    Ok(())
}

fn check_etc(c: &Config, problems: &mut Vec<String>) -> Result<(), Error> {
    for (path, e) in c.read(ETC)? {
        if e.text.is_some() == e.source.is_some() {
            problems.push(format!(
                "`etc.{path}` needs exactly one of `text` and `source`"
            ));
        }
        if let Err(why) = etc_path_ok(&path) {
            problems.push(why);
        }
    }
    Ok(())
}

fn check_activation(c: &Config, problems: &mut Vec<String>) -> Result<(), Error> {
    let steps = activation(c)?;
    for n in steps.keys() {
        if !name_ok(n) {
            problems.push(format!(
                "activation step name `{}` must be letters, digits, `_`, `.`, `@` and `-`, not starting with a punctuation mark",
                n.escape_debug()
            ));
        }
    }
    if let Err(why) = render::order_steps(&steps) {
        problems.push(why);
    }
    Ok(())
}

/// A name that is one path component and one word in every rendering:
/// units, s6 directories, activation scripts.
fn name_ok(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c))
}

fn etc_path_ok(path: &str) -> Result<(), String> {
    if path.is_empty()
        || path.starts_with('/')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "`etc.{path}`: a path relative to /etc, without `.` or `..`"
        ));
    }
    Ok(())
}

fn activation(c: &Config) -> Result<BTreeMap<String, Step>, Error> {
    Ok(c.read(ACTIVATION)?
        .into_iter()
        .map(|(n, s)| {
            let step = Step {
                script: s.script.as_str().to_owned(),
                after: s.after,
            };
            (n, step)
        })
        .collect())
}

/// A built system: its toplevel derivation and the manifest it holds.
#[derive(Debug, Clone)]
pub struct Toplevel {
    /// The toplevel derivation.
    pub drv: Drv,
    /// `manifest.json`, as written into it.
    pub manifest: serde_json::Value,
}

/// The toplevel of an evaluated configuration (which must import
/// [`module`]), for `platform`.
pub fn toplevel(cfg: &Config, platform: &Platform) -> Result<Toplevel, Error> {
    let name = cfg.read(NAME)?;
    let packages = cfg.read(PACKAGES)?;
    let etc = cfg.read(ETC)?;
    let release = cfg.read(RELEASE)?;
    let users = cfg
        .read(USERS)?
        .into_iter()
        .map(|(n, u)| {
            let u = manifest::User {
                uid: u.uid,
                group: u.group,
                home: u.home,
                shell: u.shell,
                system: u.system,
                description: u.description,
            };
            (n, u)
        })
        .collect();
    let groups = cfg
        .read(GROUPS)?
        .into_iter()
        .map(|(n, g)| (n, manifest::Group { gid: g.gid }))
        .collect();
    let steps = activation(cfg)?;
    let order = render::order_steps(&steps).map_err(Error::msg)?;

    let mut entries: Vec<TreeEntry> = Vec::new();
    let mut manifest_etc = BTreeMap::new();
    for (path, e) in etc {
        etc_path_ok(&path).map_err(Error::msg)?;
        let (hash, source, entry) = match (e.text, e.source) {
            (Some(text), None) => (
                Some(content_hash(text.as_str().as_bytes())),
                None,
                TreeEntry::File {
                    path: format!("etc/{path}"),
                    text,
                    executable: false,
                },
            ),
            (None, Some(source)) => (
                None,
                Some(source.as_str().to_owned()),
                TreeEntry::Link {
                    path: format!("etc/{path}"),
                    target: source,
                },
            ),
            _ => {
                return Err(Error::msg(format!(
                    "`etc.{path}` needs exactly one of `text` and `source`"
                )))
            }
        };
        manifest_etc.insert(
            path,
            manifest::EtcEntry {
                mode: e.mode,
                user: e.user,
                group: e.group,
                hash,
                source,
            },
        );
        entries.push(entry);
    }

    // Services keep the context of their strings (a package's program in
    // `argv`): every rendered file names what it runs.
    let mut ctx = Context::default();
    let mut services = BTreeMap::new();
    for n in cfg.keys(SERVICES.path())? {
        if let Some(s) = service_options(cfg, &n)? {
            collect_context(&s.clone().into_value(), &mut ctx);
            services.insert(n.clone(), service_of(&n, s));
        }
    }
    let mut manifest_services = BTreeMap::new();
    for s in services.values() {
        let unit = render::render_systemd(s);
        let hash = content_hash(
            serde_json::to_string(s)
                .map_err(|e| Error::msg(e.to_string()))?
                .as_bytes(),
        );
        entries.push(file(format!("systemd/{}.service", s.name), unit, false));
        for f in render::render_s6(s) {
            entries.push(file(
                format!("s6/{}/{}", s.name, f.path),
                f.text,
                f.executable,
            ));
        }
        manifest_services.insert(
            s.name.clone(),
            ManifestService {
                service: s.clone(),
                hash,
            },
        );
    }

    let mut step_ctx = Context::default();
    collect_context(&cfg.value(ACTIVATION.path())?, &mut step_ctx);
    for (n, s) in &steps {
        let script = format!("#!/bin/sh\nset -e\n{}\n", s.script.trim_end());
        entries.push(file(format!("activation/{n}"), script, true));
    }

    let sw =
        trivial::symlink_join(platform, &format!("{name}-sw"), &packages).map_err(Error::from)?;
    entries.push(TreeEntry::Link {
        path: "sw".into(),
        target: Str::from(&sw),
    });
    let typed = Manifest {
        release,
        services: manifest_services,
        users,
        groups,
        etc: manifest_etc,
        activation: manifest::Activation { order, steps },
        sw: crate::text!("{}", sw).as_str().to_owned(),
        ..Manifest::new(name.as_str())
    };
    let manifest = serde_json::to_value(&typed).map_err(|e| Error::msg(e.to_string()))?;
    let text =
        serde_json::to_string_pretty(&manifest).map_err(|e| Error::msg(e.to_string()))? + "\n";
    // The tree is one derivation: the paths its files name (programs in
    // `argv`, packages in activation scripts) are declared once, here.
    ctx.extend(&step_ctx);
    entries.push(TreeEntry::File {
        path: "manifest.json".into(),
        text: Str::from_parts(text, ctx),
        executable: false,
    });
    let drv = trivial::write_tree(platform, &format!("bigtop-system-{name}"), entries)
        .map_err(Error::from)?;
    Ok(Toplevel { drv, manifest })
}

/// A file of the tree; the paths it names are in the tree's context.
fn file(path: String, text: String, executable: bool) -> TreeEntry {
    TreeEntry::File {
        path,
        text: Str::from(text),
        executable,
    }
}

fn collect_context(v: &Value, ctx: &mut Context) {
    match v {
        Value::Str(s) => ctx.extend(s.context()),
        Value::Package(d) => ctx.extend(Str::from(d).context()),
        Value::Output(o) => ctx.extend(Str::from(o).context()),
        Value::List(l) => l.iter().for_each(|v| collect_context(v, ctx)),
        Value::Map(m) => m.values().for_each(|v| collect_context(v, ctx)),
        Value::Null | Value::Bool(_) | Value::Int(_) => {}
    }
}

fn content_hash(bytes: &[u8]) -> String {
    bigtop_core::Hash::digest(bigtop_core::HashAlgo::Blake3, bytes).to_string()
}
