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

mod render;

use std::collections::BTreeMap;

use bigtop_core::manifest::{self, Manifest, ManifestService};

use crate::drv::{Context, Drv, Str};
use crate::module::{types, Config, Error, Module, Value};
use crate::platform::Platform;
use crate::trivial::{self, TreeEntry};

pub use bigtop_core::manifest::{OnChange, Ready, Restart, Service, Step};

/// The largest user or group id: `(uid_t)-1` means "none" to the kernel.
const ID_MAX: i64 = u32::MAX as i64 - 1;

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
        m.option("system.name", hostname, |o| {
            o.description("The host name.");
        });
        m.option("system.release", types::optional(types::single_line_str()), |o| {
            o.default(Value::Null).description(
                "The release the system is built from (a fleet defines it): recorded in the manifest, \
                 so that activation can refuse a downgrade and deploy tools can report it.",
            );
        });
        m.option("system.packages", types::list(types::package()), |o| {
            o.default(Vec::<Value>::new())
                .description("Packages installed system-wide: joined into `sw`.");
        });
        m.option(
            "etc",
            types::map(types::submodule(|s| {
                s.option("text", types::optional(types::lines()), |o| {
                    o.default(Value::Null).description("The file's contents.");
                });
                s.option("source", types::optional(types::path()), |o| {
                    o.default(Value::Null)
                        .description("A file to link instead (a package's, usually).");
                });
                s.option(
                    "mode",
                    types::matching("^[0-7]{4}$").expect("a valid pattern"),
                    |o| {
                        o.default("0444")
                            .description("Its mode, when activation copies it.");
                    },
                );
                s.option("user", types::non_empty_str(), |o| {
                    o.default("root");
                });
                s.option("group", types::non_empty_str(), |o| {
                    o.default("root");
                });
            })),
            |o| {
                o.default(BTreeMap::<String, Value>::new())
                    .description("Files of /etc, by path below it.");
            },
        );
        m.option(
            "users.users",
            types::map(types::submodule(|s| {
                s.option("uid", types::optional(types::between(0, ID_MAX)), |o| {
                    o.default(Value::Null)
                        .description("Its number; activation picks one if null.");
                });
                s.option("group", types::non_empty_str(), |o| {
                    o.default("nogroup");
                });
                s.option("home", types::path(), |o| {
                    o.default("/var/empty");
                });
                s.option("shell", types::path(), |o| {
                    o.default("/usr/sbin/nologin");
                });
                s.option("system", types::bool(), |o| {
                    o.default(true)
                        .description("A service account rather than a person's.");
                });
                s.option("description", types::single_line_str(), |o| {
                    o.default("");
                });
            })),
            |o| {
                o.default(BTreeMap::<String, Value>::new())
                    .description("Accounts, by name (`root` always exists).");
            },
        );
        m.option(
            "users.groups",
            types::map(types::submodule(|s| {
                s.option("gid", types::optional(types::between(0, ID_MAX)), |o| {
                    o.default(Value::Null);
                });
            })),
            |o| {
                o.default(BTreeMap::<String, Value>::new())
                    .description("Groups, by name (`root` and `nogroup` always exist).");
            },
        );
        m.option(
            "system.activation",
            types::map(types::submodule(|s| {
                s.option("script", types::lines(), |o| {
                    o.description(
                        "Shell commands; run at every switch, so they must be idempotent.",
                    );
                });
                s.option("after", types::list(types::str()), |o| {
                    o.default(Vec::<String>::new())
                        .description("Steps that run before this one.");
                });
            })),
            |o| {
                o.default(BTreeMap::<String, Value>::new())
                    .description("Activation steps, by name.");
            },
        );
        m.option("system.services", types::map(service_type()), |o| {
            o.default(BTreeMap::<String, Value>::new())
                .description("Services, by name.");
        });
        // Name lookups read it: without it, glibc cannot list a user's
        // groups (which s6-envuidgid does for every service that runs as
        // a user). A default, so that a module may replace it.
        m.define(
            r#"etc."nsswitch.conf".text"#,
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

fn service_type() -> types::Type {
    types::submodule(|s| {
        s.option("enable", types::bool(), |o| {
            o.default(true);
        });
        s.option("description", types::single_line_str(), |o| {
            o.default("");
        });
        s.option("argv", types::list(types::str()), |o| {
            o.description("The program and its arguments.");
        });
        s.option("environment", types::map(types::str()), |o| {
            o.default(BTreeMap::<String, Value>::new());
        });
        s.option("working_directory", types::optional(types::path()), |o| {
            o.default(Value::Null);
        });
        s.option("user", types::non_empty_str(), |o| {
            o.default("root");
        });
        s.option("group", types::non_empty_str(), |o| {
            o.default("root");
        });
        s.option("requires", types::list(types::str()), |o| {
            o.default(Vec::<String>::new());
        });
        s.option("after", types::list(types::str()), |o| {
            o.default(Vec::<String>::new());
        });
        s.option(
            "restart",
            types::one_of_str(["always", "on-failure", "never"]),
            |o| {
                o.default("on-failure");
            },
        );
        s.option("restart_delay_ms", types::unsigned(), |o| {
            o.default(1000);
        });
        s.option("reload", types::optional(types::list(types::str())), |o| {
            o.default(Value::Null);
        });
        s.option(
            "on_change",
            types::one_of_str(["restart", "reload", "nothing"]),
            |o| {
                o.default("restart");
            },
        );
        s.option("restart_triggers", types::list(types::str()), |o| {
            o.default(Vec::<String>::new());
        });
        s.option(
            "ready",
            types::optional(types::submodule(|r| {
                r.option("tcp_port", types::optional(types::port()), |o| {
                    o.default(Value::Null);
                });
                r.option("command", types::optional(types::list(types::str())), |o| {
                    o.default(Value::Null);
                });
                r.option("timeout_ms", types::unsigned(), |o| {
                    o.default(30_000);
                });
            })),
            |o| {
                o.default(Value::Null);
            },
        );
    })
}

/// The enabled services of a configuration, typed.
pub fn services(cfg: &Config) -> Result<BTreeMap<String, Service>, Error> {
    let mut out = BTreeMap::new();
    for name in cfg.keys("system.services")? {
        if let Some(s) = service(cfg, &name)? {
            out.insert(name, s);
        }
    }
    Ok(out)
}

/// The service `name`, typed; `None` when disabled. Merged on its own: a
/// broken service does not keep the others from being read.
fn service(cfg: &Config, name: &str) -> Result<Option<Service>, Error> {
    let path = format!("system.services.\"{name}\"");
    let Value::Map(mut fields) = cfg.value(&path)? else {
        return Ok(None);
    };
    if fields.remove("enable") == Some(Value::Bool(false)) {
        return Ok(None);
    }
    fields.insert("name".into(), Value::from(name));
    serde_json::from_value(Value::Map(fields).to_json())
        .map(Some)
        .map_err(|e| Error::Convert {
            option: format!("system.services.{name}"),
            rust_type: "Service",
            reason: e.to_string(),
        })
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
    let services: BTreeMap<String, Service> = c
        .keys("system.services")?
        .into_iter()
        .filter_map(|n| service(c, &n).ok().flatten().map(|s| (n, s)))
        .collect();
    let users: BTreeMap<String, Value> = c.get("users.users")?;
    let groups: BTreeMap<String, Value> = c.get("users.groups")?;
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
            if !services.contains_key(d) {
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
        if s.on_change == OnChange::Reload && s.reload.is_none() {
            problems.push(format!(
                "service `{}` reloads on change but has no `reload` command",
                s.name
            ));
        }
    }
    for (name, u) in &users {
        if let Value::Map(f) = u {
            if let Some(Value::Str(g)) = f.get("group") {
                if !group_ok(g.as_str()) {
                    problems.push(format!(
                        "user `{name}` has group `{}`, which is not in `users.groups`",
                        g.as_str()
                    ));
                }
            }
        }
    }
    Ok(())
}

fn check_etc(c: &Config, problems: &mut Vec<String>) -> Result<(), Error> {
    let etc: BTreeMap<String, Value> = c.get("etc")?;
    for (path, e) in &etc {
        if let Value::Map(f) = e {
            let text = f.get("text").is_some_and(|v| *v != Value::Null);
            let source = f.get("source").is_some_and(|v| *v != Value::Null);
            if text == source {
                problems.push(format!(
                    "`etc.{path}` needs exactly one of `text` and `source`"
                ));
            }
        }
        if let Err(why) = etc_path_ok(path) {
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
    let crate::module::Json(steps) =
        c.get::<crate::module::Json<BTreeMap<String, Step>>>("system.activation")?;
    Ok(steps)
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
    let name: String = cfg.get("system.name")?;
    let services = services(cfg)?;
    let packages: Vec<Drv> = cfg.get("system.packages")?;
    let etc: BTreeMap<String, Value> = cfg.get("etc")?;
    let release: Option<String> = cfg.get("system.release")?;
    let crate::module::Json(users) =
        cfg.get::<crate::module::Json<BTreeMap<String, manifest::User>>>("users.users")?;
    let crate::module::Json(groups) =
        cfg.get::<crate::module::Json<BTreeMap<String, manifest::Group>>>("users.groups")?;
    let steps = activation(cfg)?;
    let order = render::order_steps(&steps).map_err(Error::msg)?;

    let mut entries: Vec<TreeEntry> = Vec::new();
    let mut manifest_etc = BTreeMap::new();
    for (path, e) in etc {
        etc_path_ok(&path).map_err(Error::msg)?;
        let Value::Map(mut f) = e else { continue };
        let field = |f: &mut BTreeMap<String, Value>, k: &str| -> Result<String, Error> {
            crate::module::FromValue::from_value(f.remove(k).unwrap_or_default()).map_err(
                |reason| Error::Convert {
                    option: format!("etc.{path}.{k}"),
                    rust_type: "String",
                    reason,
                },
            )
        };
        let (mode, user, group) = (
            field(&mut f, "mode")?,
            field(&mut f, "user")?,
            field(&mut f, "group")?,
        );
        let entry = match (f.remove("text"), f.remove("source")) {
            (Some(Value::Str(text)), _) => {
                let hash = content_hash(text.as_str().as_bytes());
                manifest_etc.insert(
                    path.clone(),
                    manifest::EtcEntry {
                        mode,
                        user,
                        group,
                        hash: Some(hash),
                        source: None,
                    },
                );
                TreeEntry::File {
                    path: format!("etc/{path}"),
                    text,
                    executable: false,
                }
            }
            (_, Some(Value::Str(source))) => {
                manifest_etc.insert(
                    path.clone(),
                    manifest::EtcEntry {
                        mode,
                        user,
                        group,
                        hash: None,
                        source: Some(source.as_str().to_owned()),
                    },
                );
                TreeEntry::Link {
                    path: format!("etc/{path}"),
                    target: source,
                }
            }
            _ => {
                return Err(Error::msg(format!(
                    "`etc.{path}` needs exactly one of `text` and `source`"
                )))
            }
        };
        entries.push(entry);
    }

    // Services keep the context of their strings (a package's program in
    // `argv`): every rendered file names what it runs.
    let raw: BTreeMap<String, Value> = cfg.get("system.services")?;
    let mut ctx = Context::default();
    for (n, v) in &raw {
        if services.contains_key(n) {
            collect_context(v, &mut ctx);
        }
    }
    let mut manifest_services = BTreeMap::new();
    for s in services.values() {
        let unit = render::systemd_unit(s);
        let hash = content_hash(
            serde_json::to_string(s)
                .map_err(|e| Error::msg(e.to_string()))?
                .as_bytes(),
        );
        entries.push(file(format!("systemd/{}.service", s.name), unit, false));
        for (rel, text, exec) in render::s6_dir(s) {
            entries.push(file(format!("s6/{}/{rel}", s.name), text, exec));
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
    collect_context(&cfg.value("system.activation")?, &mut step_ctx);
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
