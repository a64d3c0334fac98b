//! Services rendered for each init system, and activation steps ordered.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::{OnChange, Restart, Service, Step};

/// A systemd word: double-quoted, C escapes for what would end or break
/// it, `%` (specifiers, expanded everywhere) doubled, and `$` doubled
/// where systemd expands variables (command lines, not `Environment=`).
fn systemd_quote(s: &str, in_command: bool) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            // Any other control character, as a C escape: systemd ends
            // a line at some of them.
            c if c.is_control() => {
                let _ = write!(o, "\\x{:02x}", u32::from(c));
            }
            '$' if in_command => o.push_str("$$"),
            '%' => o.push_str("%%"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A value written bare after `Key=`: `%` doubled. Callers pass only
/// single-line values (the system module's checks reject others).
fn systemd_plain(s: &str) -> String {
    s.replace('%', "%%")
}

fn systemd_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| systemd_quote(a, true))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a dependency names a systemd unit of its own kind
/// (`network-online.target`) rather than one of the system's services.
pub(super) fn is_systemd_unit(name: &str) -> bool {
    const KINDS: [&str; 8] = [
        ".target", ".socket", ".mount", ".path", ".timer", ".slice", ".device", ".service",
    ];
    KINDS
        .iter()
        .any(|k| name.len() > k.len() && name.ends_with(k))
}

/// A shell loop waiting for `check` to pass, every tenth of a second (the
/// unit's start timeout bounds it).
fn wait_until(check: &str) -> String {
    format!("until {check}; do sleep 0.1; done")
}

/// The service as a systemd unit: what `toplevel` writes at
/// `systemd/<name>.service`, for a test to look at without building.
///
/// Dependencies that name a unit of another kind (`network-online.target`)
/// are written as they are, services as `<name>.service`. A readiness
/// check becomes an `ExecStartPost=` that waits for it (so that `systemctl
/// start` returns, and units ordered after it start, once it passes)
/// within `TimeoutStartSec=`, or `Type=notify` where the service says it
/// notifies. The service's extra `[Unit]` and `[Service]` keys come last.
///
/// ```
/// use bigtop_eval::module::{Config, Module};
/// use bigtop_eval::system::{self, SERVICES};
/// let host = Module::new("host", |m| {
///     m.import(&system::module());
///     m.set(system::NAME, "web1");
///     let web = SERVICES.entry("web");
///     m.set(web.argv, ["/bin/web"]);
///     m.set(web.after, ["network-online.target"]);
///     m.set(web.limits.open_files, 65536);
///     m.set(web.systemd.service.entry("ProtectSystem"), "strict");
/// });
/// let cfg = Config::eval(&[host], None)?;
/// let unit = system::render_systemd(&system::services(&cfg)?["web"]);
/// assert!(unit.contains("After=network-online.target\n"));
/// assert!(unit.contains("LimitNOFILE=65536\n"));
/// assert!(unit.ends_with("ProtectSystem=strict\n\n[Install]\nWantedBy=multi-user.target\n"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn render_systemd(s: &Service) -> String {
    let mut u = String::from("[Unit]\n");
    if !s.description.is_empty() {
        let _ = writeln!(u, "Description={}", systemd_plain(&s.description));
    }
    let units = |names: &[String]| {
        names
            .iter()
            .map(|n| {
                if is_systemd_unit(n) {
                    n.clone()
                } else {
                    format!("{n}.service")
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    if !s.requires.is_empty() {
        let _ = writeln!(u, "Requires={}", units(&s.requires));
    }
    let after: BTreeSet<&String> = s.requires.iter().chain(&s.after).collect();
    if !after.is_empty() {
        let after: Vec<String> = after.into_iter().cloned().collect();
        let _ = writeln!(u, "After={}", units(&after));
    }
    // The escape hatch is written as given: specifiers such as `%n` are
    // the user's to use (the option's type keeps a value to one line).
    for (k, v) in &s.systemd_unit {
        let _ = writeln!(u, "{k}={v}");
    }
    let notify = s.ready.as_ref().is_some_and(|r| r.notify);
    let _ = write!(
        u,
        "\n[Service]\nType={}\n",
        if notify { "notify" } else { "simple" }
    );
    let _ = writeln!(u, "ExecStart={}", systemd_line(&s.argv));
    if let Some(r) = s.ready.as_ref() {
        if !r.notify {
            let mut checks = Vec::new();
            if let Some(p) = r.tcp_port {
                checks.push(wait_until(&format!("nc -z 127.0.0.1 {p}")));
            }
            if let Some(c) = &r.command {
                checks.push(wait_until(&sh_line(c)));
            }
            for c in checks {
                let _ = writeln!(u, "ExecStartPost=/bin/sh -c {}", systemd_quote(&c, true));
            }
        }
        let _ = writeln!(u, "TimeoutStartSec={}ms", r.timeout_ms);
    }
    if let Some(r) = &s.reload {
        let _ = writeln!(u, "ExecReload={}", systemd_line(r));
    }
    for (k, v) in &s.environment {
        let _ = writeln!(
            u,
            "Environment={}",
            systemd_quote(&format!("{k}={v}"), false)
        );
    }
    if let Some(d) = &s.working_directory {
        let _ = writeln!(u, "WorkingDirectory={}", systemd_plain(d));
    }
    let _ = writeln!(
        u,
        "User={}\nGroup={}",
        systemd_plain(&s.user),
        systemd_plain(&s.group)
    );
    let restart = match s.restart {
        Restart::Always => "always",
        Restart::OnFailure => "on-failure",
        Restart::Never => "no",
    };
    let _ = writeln!(u, "Restart={restart}\nRestartSec={}ms", s.restart_delay_ms);
    if let Some(n) = s.limits.open_files {
        let _ = writeln!(u, "LimitNOFILE={n}");
    }
    if let Some(n) = s.limits.processes {
        let _ = writeln!(u, "LimitNPROC={n}");
    }
    for (k, v) in &s.systemd_service {
        let _ = writeln!(u, "{k}={v}");
    }
    u.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    u
}

/// One file of an s6 service directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S6File {
    /// Its path inside the directory (`run`, `dependencies.d/db`).
    pub path: String,
    /// Its contents.
    pub text: String,
    /// Whether it is a script.
    pub executable: bool,
}

/// A shell word: single-quoted.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn sh_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| sh_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The service as an s6 service directory: what `toplevel` writes at
/// `s6/<name>/`, for a test to look at without building.
///
/// `run` starts it with exactly its environment (through `env -i`: unlike
/// systemd, which adds `PATH`, `LANG` and the user's `HOME`), in its
/// directory, as its user and group (through `s6-envuidgid` and
/// `s6-applyuidgid`). `finish` applies the restart policy: exit code 125
/// tells `s6-supervise` not to restart; otherwise it waits the restart
/// delay (in whole seconds, at most 4, within s6's default finish
/// timeout). `dependencies.d`
/// lists its dependencies as s6-rc does; `check` runs its readiness
/// check when it has one. Limits are set by `prlimit` (util-linux), soft
/// and hard; systemd's own
/// settings and units other than services have no s6 equivalent and are
/// left out.
pub fn render_s6(s: &Service) -> Vec<S6File> {
    let mut run = String::from("#!/bin/sh\nexec 2>&1\n");
    if let Some(d) = &s.working_directory {
        let _ = writeln!(run, "cd {} || exit 111", sh_quote(d));
    }
    run.push_str("exec");
    if !s.limits.is_empty() {
        // Soft and hard limit both, as systemd's `Limit…=` sets them:
        // `s6-softlimit` only moves the soft one, and fails above the
        // hard one. Set while still root, before the identity changes.
        run.push_str(" prlimit");
        if let Some(n) = s.limits.open_files {
            let _ = write!(run, " --nofile={n}:{n}");
        }
        if let Some(n) = s.limits.processes {
            let _ = write!(run, " --nproc={n}:{n}");
        }
    }
    if (s.user.as_str(), s.group.as_str()) != ("root", "root") {
        // The identity is changed before the environment is emptied (the
        // s6 tools are found on the supervisor's PATH): the user's ids and
        // supplementary groups, then its group replaced by the service's.
        let _ = write!(
            run,
            " s6-envuidgid {} s6-envuidgid -g {} s6-applyuidgid -Uz",
            sh_quote(&s.user),
            sh_quote(&s.group)
        );
    }
    run.push_str(" env -i");
    for (k, v) in &s.environment {
        let _ = write!(run, " {}", sh_quote(&format!("{k}={v}")));
    }
    let _ = writeln!(run, " {}", sh_line(&s.argv));

    // s6-supervise waits at least a second between starts; the finish
    // script (which it gives 5 s by default) waits the rest, in whole
    // seconds, at most 4.
    let delay = s.restart_delay_ms.div_ceil(1000).min(4);
    let wait = if delay > 1 {
        format!("sleep {}\n", delay - 1)
    } else {
        String::new()
    };
    let finish = match s.restart {
        Restart::Always => format!("#!/bin/sh\n{wait}exit 0\n"),
        Restart::OnFailure => format!(
            "#!/bin/sh\n# $1: the exit code, or 256 when killed by the signal $2.\n\
             # As systemd's on-failure: a clean exit or SIGHUP, SIGINT, SIGPIPE or SIGTERM is no failure.\n\
             [ \"$1\" = 0 ] && exit 125\n\
             [ \"$1\" = 256 ] && case \"$2\" in 1|2|13|15) exit 125 ;; esac\n\
             {wait}exit 0\n"
        ),
        Restart::Never => "#!/bin/sh\nexit 125\n".to_owned(),
    };
    let file = |path: &str, text: String, executable: bool| S6File {
        path: path.to_owned(),
        text,
        executable,
    };
    let mut out = vec![
        file("type", "longrun\n".to_owned(), false),
        file("run", run, true),
        file("finish", finish, true),
    ];
    let deps: BTreeSet<&String> = s
        .requires
        .iter()
        .chain(&s.after)
        .filter(|d| !is_systemd_unit(d))
        .collect();
    for d in deps {
        out.push(file(&format!("dependencies.d/{d}"), String::new(), false));
    }
    if let Some(r) = &s.reload {
        let script = format!("#!/bin/sh\nexec {}\n", sh_line(r));
        out.push(file("reload", script, true));
    }
    if let Some(ready) = &s.ready {
        let mut check = String::from("#!/bin/sh\n");
        if let Some(p) = ready.tcp_port {
            let _ = writeln!(check, "nc -z 127.0.0.1 {p} || exit 1");
        }
        if let Some(c) = &ready.command {
            let _ = writeln!(check, "{} || exit 1", sh_line(c));
        }
        check.push_str("exit 0\n");
        out.push(file("check", check, true));
    }
    if s.on_change == OnChange::Nothing {
        // Read by the activation engine: leave the running one alone.
        out.push(file("keep-on-change", String::new(), false));
    }
    out
}

/// The steps in an order where each comes after the steps it names;
/// among steps free to run, by name. An unknown step or a cycle is an
/// error naming it.
pub(super) fn order_steps(steps: &BTreeMap<String, Step>) -> Result<Vec<String>, String> {
    for (n, s) in steps {
        for d in &s.after {
            if !steps.contains_key(d) {
                return Err(format!(
                    "activation step `{n}` comes after `{d}`, which is not a step"
                ));
            }
        }
    }
    let mut done: Vec<String> = Vec::new();
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    while placed.len() < steps.len() {
        let next = steps
            .iter()
            .find(|(n, s)| {
                !placed.contains(n.as_str()) && s.after.iter().all(|d| placed.contains(d.as_str()))
            })
            .map(|(n, _)| n.as_str());
        match next {
            Some(n) => {
                placed.insert(n);
                done.push(n.to_owned());
            }
            None => {
                let stuck: Vec<&str> = steps
                    .keys()
                    .map(String::as_str)
                    .filter(|n| !placed.contains(n))
                    .collect();
                return Err(format!(
                    "activation steps {} come after each other in a cycle",
                    stuck
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    Ok(done)
}
