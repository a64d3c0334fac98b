//! Services rendered for each init system, and activation steps ordered.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::{OnChange, Restart, Service, Step};

/// A systemd unit argument: double-quoted, with what systemd would expand
/// (`$`, `%`) escaped.
fn systemd_quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '$' => o.push_str("$$"),
            '%' => o.push_str("%%"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn systemd_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| systemd_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The service as a systemd unit.
pub(super) fn systemd_unit(s: &Service) -> String {
    let mut u = String::from("[Unit]\n");
    if !s.description.is_empty() {
        let _ = writeln!(u, "Description={}", s.description);
    }
    let units = |names: &[String]| {
        names
            .iter()
            .map(|n| format!("{n}.service"))
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
    u.push_str("\n[Service]\nType=simple\n");
    let _ = writeln!(u, "ExecStart={}", systemd_line(&s.argv));
    if let Some(r) = &s.reload {
        let _ = writeln!(u, "ExecReload={}", systemd_line(r));
    }
    for (k, v) in &s.environment {
        let _ = writeln!(u, "Environment={}", systemd_quote(&format!("{k}={v}")));
    }
    if let Some(d) = &s.working_directory {
        let _ = writeln!(u, "WorkingDirectory={d}");
    }
    let _ = writeln!(u, "User={}\nGroup={}", s.user, s.group);
    let restart = match s.restart {
        Restart::Always => "always",
        Restart::OnFailure => "on-failure",
        Restart::Never => "no",
    };
    let _ = writeln!(u, "Restart={restart}\nRestartSec={}ms", s.restart_delay_ms);
    u.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    u
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

/// The service as an s6 service directory: (path inside it, text,
/// executable).
///
/// `run` starts it with exactly its environment (through `env -i`), in
/// its directory, as its user (through `s6-setuidgid` when not root).
/// `finish` applies the restart policy: exit code 125 tells
/// `s6-supervise` not to restart; otherwise it waits the restart delay
/// (at most 4 s, within s6's default finish timeout). `dependencies.d`
/// lists its dependencies as s6-rc does; `check` runs its readiness
/// check when it has one.
pub(super) fn s6_dir(s: &Service) -> Vec<(String, String, bool)> {
    let mut run = String::from("#!/bin/sh\nexec 2>&1\n");
    if let Some(d) = &s.working_directory {
        let _ = writeln!(run, "cd {} || exit 111", sh_quote(d));
    }
    run.push_str("exec env -i");
    for (k, v) in &s.environment {
        let _ = write!(run, " {}", sh_quote(&format!("{k}={v}")));
    }
    if s.user != "root" {
        let _ = write!(
            run,
            " s6-setuidgid {}",
            sh_quote(&format!("{}:{}", s.user, s.group))
        );
    }
    let _ = writeln!(run, " {}", sh_line(&s.argv));

    let delay = (s.restart_delay_ms.min(4000) as f64) / 1000.0;
    let wait = if delay > 0.0 {
        format!("sleep {delay}\n")
    } else {
        String::new()
    };
    let finish = match s.restart {
        Restart::Always => format!("#!/bin/sh\n{wait}exit 0\n"),
        Restart::OnFailure => {
            format!("#!/bin/sh\n# $1: the exit code (256 when killed by a signal)\n[ \"$1\" = 0 ] && exit 125\n{wait}exit 0\n")
        }
        Restart::Never => "#!/bin/sh\nexit 125\n".to_owned(),
    };
    let mut out = vec![
        ("type".to_owned(), "longrun\n".to_owned(), false),
        ("run".to_owned(), run, true),
        ("finish".to_owned(), finish, true),
    ];
    let deps: BTreeSet<&String> = s.requires.iter().chain(&s.after).collect();
    for d in deps {
        out.push((format!("dependencies.d/{d}"), String::new(), false));
    }
    if let Some(r) = &s.reload {
        let script = format!("#!/bin/sh\nexec {}\n", sh_line(r));
        out.push(("reload".to_owned(), script, true));
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
        out.push(("check".to_owned(), check, true));
    }
    if s.on_change == OnChange::Nothing {
        // Read by the activation engine: leave the running one alone.
        out.push(("keep-on-change".to_owned(), String::new(), false));
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
