//! The activation plan: what moving a machine from one system to another
//! does, and why, computed from the two manifests and what runs now.
//!
//! The plan is a value before it is an action: `dry-activate --json`
//! prints it for an operator to review (or send to a customer before a
//! maintenance window), the engine carries it out step by step, and a
//! rollback is the plan from the new system back to the old one. Diffing
//! touches no file and starts no process: the caller observes the machine
//! first ([`Observed`]).

use std::collections::{BTreeMap, BTreeSet};

use bigtop_core::manifest::{EtcEntry, Manifest, ManifestService, OnChange};
use serde::Serialize;

/// What runs on the machine and what is on its disk, as far as the plan
/// depends on it.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Services that run now.
    pub running: BTreeSet<String>,
    /// Paths below /etc that exist and that no generation made: a file
    /// the new system declares there is moved aside, not overwritten.
    pub etc_unmanaged: BTreeSet<String>,
    /// Paths below /etc the current generation manages but that were
    /// changed or removed by hand.
    pub etc_drifted: BTreeSet<String>,
}

/// What happens to one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceAction {
    /// Started (it is new, or was not running).
    Start,
    /// Stopped (it is gone).
    Stop,
    /// Stopped, then started with its new definition.
    Restart,
    /// Its reload command runs.
    Reload,
    /// Changed, but left running as it is (`on_change = nothing`).
    Keep,
}

/// One service's change and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceChange {
    /// The service.
    pub name: String,
    /// What happens to it.
    pub action: ServiceAction,
    /// Why: "new service", "argv changed", "restart trigger /etc/x.conf
    /// changed", …
    pub reasons: Vec<String>,
}

/// What happens to one file of /etc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EtcAction {
    /// Made (it is new).
    Add,
    /// Replaced with the new generation's.
    Update,
    /// Removed (no longer declared).
    Remove,
}

/// One /etc file's change and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcChange {
    /// Its path below /etc.
    pub path: String,
    /// What happens to it.
    pub action: EtcAction,
    /// Why.
    pub reason: String,
    /// A file in the way (made by hand or by another tool) is moved to
    /// `<path>.bigtop-backup`, never overwritten.
    pub backup: bool,
}

/// An account's change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountChange {
    /// The user or group.
    pub name: String,
    /// `add`, `update` or `remove`.
    pub action: EtcAction,
    /// Why: "new user", "home /a → /b", "no longer declared".
    pub reason: String,
}

/// An activation step that runs, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRun {
    /// The step.
    pub name: String,
    /// Why it runs: new, changed, or (steps are idempotent) every time.
    pub reason: String,
}

/// The plan for moving a machine to a system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The system's name.
    pub name: String,
    /// The release it moves from, when the old manifest names one.
    pub release_from: Option<String>,
    /// The release it moves to, when the new manifest names one.
    pub release_to: Option<String>,
    /// Every service that changes, by name.
    pub services: Vec<ServiceChange>,
    /// Services stopped (gone, or restarting), dependents first.
    pub stop_order: Vec<String>,
    /// Services started (new, restarting, or not running), dependencies
    /// first.
    pub start_order: Vec<String>,
    /// Services whose reload command runs, dependencies first.
    pub reload_order: Vec<String>,
    /// Services left exactly as they run.
    pub unchanged: usize,
    /// Files of /etc that change.
    pub etc: Vec<EtcChange>,
    /// Users that change.
    pub users: Vec<AccountChange>,
    /// Groups that change.
    pub groups: Vec<AccountChange>,
    /// Activation steps, in the order they run.
    pub steps: Vec<StepRun>,
    /// What the plan could not honour exactly (a dependency cycle among
    /// services, ordered by name instead).
    pub warnings: Vec<String>,
}

impl Plan {
    /// Whether the plan changes nothing on the machine but running the
    /// activation steps.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.etc.is_empty()
            && self.users.is_empty()
            && self.groups.is_empty()
    }
}

/// The plan from `old` (none: a machine never activated) to `new`, given
/// what runs now.
pub fn diff(old: Option<&Manifest>, new: &Manifest, observed: &Observed) -> Plan {
    let empty = Manifest::new(new.name.clone());
    let old = old.unwrap_or(&empty);
    let etc = diff_etc(old, new, observed);
    let changed_etc: BTreeSet<&str> = etc.iter().map(|c| c.path.as_str()).collect();

    let mut services = Vec::new();
    let mut unchanged = 0;
    for (name, s) in &new.services {
        let change = match old.services.get(name) {
            None => Some((ServiceAction::Start, vec!["new service".to_owned()])),
            Some(was) => {
                let mut reasons = field_changes(was, s);
                for t in &s.service.restart_triggers {
                    let in_etc = t.strip_prefix("/etc/").unwrap_or_default();
                    if changed_etc.contains(in_etc) {
                        reasons.push(format!("restart trigger {t} changed"));
                    }
                }
                if reasons.is_empty() && !observed.running.contains(name) {
                    Some((ServiceAction::Start, vec!["not running".to_owned()]))
                } else if reasons.is_empty() {
                    None
                } else {
                    let action = match s.service.on_change {
                        OnChange::Restart => ServiceAction::Restart,
                        OnChange::Reload => ServiceAction::Reload,
                        OnChange::Nothing => ServiceAction::Keep,
                    };
                    // A reload or a kept service that is not running has
                    // nothing to reload or keep: it starts.
                    if action != ServiceAction::Restart && !observed.running.contains(name) {
                        reasons.push("not running".to_owned());
                        Some((ServiceAction::Start, reasons))
                    } else {
                        Some((action, reasons))
                    }
                }
            }
        };
        match change {
            Some((action, reasons)) => services.push(ServiceChange {
                name: name.clone(),
                action,
                reasons,
            }),
            None => unchanged += 1,
        }
    }
    for name in old.services.keys() {
        if !new.services.contains_key(name) {
            services.push(ServiceChange {
                name: name.clone(),
                action: ServiceAction::Stop,
                reasons: vec!["service removed".to_owned()],
            });
        }
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));

    let mut warnings = Vec::new();
    let of = |actions: &[ServiceAction]| -> BTreeSet<&str> {
        services
            .iter()
            .filter(|c| actions.contains(&c.action))
            .map(|c| c.name.as_str())
            .collect()
    };
    let mut stop_order = dependency_order(
        &old.services,
        &of(&[ServiceAction::Stop, ServiceAction::Restart]),
        &mut warnings,
    );
    stop_order.reverse();
    let start_order = dependency_order(
        &new.services,
        &of(&[ServiceAction::Start, ServiceAction::Restart]),
        &mut warnings,
    );
    let reload_order =
        dependency_order(&new.services, &of(&[ServiceAction::Reload]), &mut warnings);

    let steps = new
        .activation
        .order
        .iter()
        .map(|n| {
            let reason = match (old.activation.steps.get(n), new.activation.steps.get(n)) {
                (None, _) => "new step",
                (Some(a), Some(b)) if a.script != b.script => "script changed",
                _ => "runs at every activation",
            };
            StepRun {
                name: n.clone(),
                reason: reason.to_owned(),
            }
        })
        .collect();

    Plan {
        name: new.name.clone(),
        release_from: old.release.clone(),
        release_to: new.release.clone(),
        services,
        stop_order,
        start_order,
        reload_order,
        unchanged,
        etc,
        users: diff_accounts(&old.users, &new.users, "user", |a, b| {
            let mut r = Vec::new();
            if a.uid != b.uid {
                r.push(format!("uid {} → {}", show(a.uid), show(b.uid)));
            }
            if a.group != b.group {
                r.push(format!("group {} → {}", a.group, b.group));
            }
            if a.home != b.home {
                r.push(format!("home {} → {}", a.home, b.home));
            }
            if a.shell != b.shell {
                r.push(format!("shell {} → {}", a.shell, b.shell));
            }
            if a.description != b.description {
                r.push("description changed".into());
            }
            if a.system != b.system {
                r.push("system account changed".into());
            }
            r
        }),
        groups: diff_accounts(&old.groups, &new.groups, "group", |a, b| {
            if a.gid != b.gid {
                vec![format!("gid {} → {}", show(a.gid), show(b.gid))]
            } else {
                Vec::new()
            }
        }),
        steps,
        warnings,
    }
}

fn show(id: Option<u32>) -> String {
    id.map_or_else(|| "allocated".to_owned(), |i| i.to_string())
}

/// What differs between two definitions of a service, as reasons.
fn field_changes(a: &ManifestService, b: &ManifestService) -> Vec<String> {
    if a.hash == b.hash {
        return Vec::new();
    }
    let (a, b) = (&a.service, &b.service);
    let mut r = Vec::new();
    if a.argv != b.argv {
        r.push("argv changed".to_owned());
    }
    if a.environment != b.environment {
        let keys: BTreeSet<&String> = a
            .environment
            .keys()
            .chain(b.environment.keys())
            .filter(|k| a.environment.get(*k) != b.environment.get(*k))
            .collect();
        let keys: Vec<&str> = keys.into_iter().map(String::as_str).collect();
        r.push(format!("environment changed ({})", keys.join(", ")));
    }
    let mut field = |changed: bool, name: &str| {
        if changed {
            r.push(format!("{name} changed"));
        }
    };
    field(
        a.working_directory != b.working_directory,
        "working directory",
    );
    field(a.user != b.user, "user");
    field(a.group != b.group, "group");
    field(a.requires != b.requires, "requires");
    field(a.after != b.after, "after");
    field(a.restart != b.restart, "restart policy");
    field(a.restart_delay_ms != b.restart_delay_ms, "restart delay");
    field(a.reload != b.reload, "reload command");
    field(a.on_change != b.on_change, "on_change");
    field(a.ready != b.ready, "readiness check");
    field(a.limits != b.limits, "limits");
    field(
        a.systemd_unit != b.systemd_unit || a.systemd_service != b.systemd_service,
        "systemd settings",
    );
    field(a.description != b.description, "description");
    for t in &b.restart_triggers {
        if !a.restart_triggers.contains(t) {
            r.push(format!("restart trigger {t} changed"));
        }
    }
    if r.is_empty() {
        // The hash covers fields this bigtop does not compare one by one.
        r.push("definition changed".into());
    }
    r
}

/// The names in `subset`, each after the services it requires or comes
/// after (within `subset`); among those free to go, by name. A cycle is
/// broken by name and reported in `warnings`.
fn dependency_order(
    services: &BTreeMap<String, ManifestService>,
    subset: &BTreeSet<&str>,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let deps = |n: &str| -> BTreeSet<&str> {
        services
            .get(n)
            .map(|s| {
                s.service
                    .requires
                    .iter()
                    .chain(&s.service.after)
                    .map(String::as_str)
                    .filter(|d| subset.contains(d) && *d != n)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut waiting: BTreeMap<&str, BTreeSet<&str>> =
        subset.iter().map(|n| (*n, deps(n))).collect();
    let mut out = Vec::with_capacity(subset.len());
    while !waiting.is_empty() {
        let ready: Vec<&str> = waiting
            .iter()
            .filter(|(_, d)| d.is_empty())
            .map(|(n, _)| *n)
            .collect();
        let batch = if ready.is_empty() {
            let stuck: Vec<&str> = waiting.keys().copied().collect();
            warnings.push(format!(
                "services {} depend on each other in a cycle: ordered by name",
                stuck
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            stuck
        } else {
            ready
        };
        for n in &batch {
            waiting.remove(n);
            out.push((*n).to_owned());
        }
        for d in waiting.values_mut() {
            for n in &batch {
                d.remove(n);
            }
        }
    }
    out
}

fn diff_etc(old: &Manifest, new: &Manifest, observed: &Observed) -> Vec<EtcChange> {
    let mut out = Vec::new();
    for (path, e) in &new.etc {
        let backup = observed.etc_unmanaged.contains(path);
        let drifted = observed.etc_drifted.contains(path);
        let (action, reason) = match old.etc.get(path) {
            None if backup => (
                EtcAction::Add,
                "new file; the file there was not made by bigtop".to_owned(),
            ),
            None => (EtcAction::Add, "new file".to_owned()),
            Some(was) if drifted => (
                EtcAction::Update,
                if same_file(was, e) {
                    "changed by hand".to_owned()
                } else {
                    "contents changed, and changed by hand".to_owned()
                },
            ),
            Some(was) if !same_file(was, e) => (EtcAction::Update, etc_reason(was, e)),
            Some(_) => continue,
        };
        out.push(EtcChange {
            path: path.clone(),
            action,
            reason,
            backup: backup || drifted,
        });
    }
    for path in old.etc.keys() {
        if !new.etc.contains_key(path) {
            out.push(EtcChange {
                path: path.clone(),
                action: EtcAction::Remove,
                reason: "no longer declared".to_owned(),
                backup: observed.etc_drifted.contains(path),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn same_file(a: &EtcEntry, b: &EtcEntry) -> bool {
    a == b
}

fn etc_reason(a: &EtcEntry, b: &EtcEntry) -> String {
    let mut r = Vec::new();
    if a.hash != b.hash || a.source != b.source {
        r.push("contents changed".to_owned());
    }
    if a.mode != b.mode {
        r.push(format!("mode {} → {}", a.mode, b.mode));
    }
    if a.user != b.user || a.group != b.group {
        r.push(format!(
            "owner {}:{} → {}:{}",
            a.user, a.group, b.user, b.group
        ));
    }
    r.join(", ")
}

fn diff_accounts<T: PartialEq>(
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    kind: &str,
    reasons: impl Fn(&T, &T) -> Vec<String>,
) -> Vec<AccountChange> {
    let mut out = Vec::new();
    for (name, b) in new {
        match old.get(name) {
            None => out.push(AccountChange {
                name: name.clone(),
                action: EtcAction::Add,
                reason: format!("new {kind}"),
            }),
            Some(a) if a != b => out.push(AccountChange {
                name: name.clone(),
                action: EtcAction::Update,
                reason: reasons(a, b).join(", "),
            }),
            Some(_) => {}
        }
    }
    for name in old.keys() {
        if !new.contains_key(name) {
            out.push(AccountChange {
                name: name.clone(),
                action: EtcAction::Remove,
                reason: "no longer declared".to_owned(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bigtop_core::manifest::{Restart, Service};

    fn service(name: &str, argv: &str, deps: &[&str]) -> ManifestService {
        let service = Service {
            name: name.into(),
            description: String::new(),
            argv: vec![argv.into()],
            environment: BTreeMap::new(),
            working_directory: None,
            user: "root".into(),
            group: "root".into(),
            requires: deps.iter().map(|d| d.to_string()).collect(),
            after: Vec::new(),
            restart: Restart::OnFailure,
            restart_delay_ms: 1000,
            reload: Some(vec!["/bin/true".into()]),
            on_change: OnChange::Restart,
            restart_triggers: Vec::new(),
            limits: Default::default(),
            systemd_unit: Default::default(),
            systemd_service: Default::default(),
            ready: None,
        };
        with_hash(service)
    }

    fn with_hash(service: Service) -> ManifestService {
        let hash = format!("{:?}", service);
        ManifestService { service, hash }
    }

    fn manifest(services: Vec<ManifestService>) -> Manifest {
        let mut m = Manifest::new("web1");
        for s in services {
            m.services.insert(s.service.name.clone(), s);
        }
        m
    }

    fn running(names: &[&str]) -> Observed {
        Observed {
            running: names.iter().map(|n| n.to_string()).collect(),
            ..Observed::default()
        }
    }

    #[test]
    fn services_start_in_dependency_order_and_stop_in_reverse() {
        let old = manifest(vec![
            service("db", "/db", &[]),
            service("app", "/app", &["db"]),
            service("old", "/old", &["app"]),
        ]);
        let new = manifest(vec![
            service("db", "/db2", &[]),
            service("app", "/app2", &["db"]),
            service("web", "/web", &["app"]),
        ]);
        let plan = diff(Some(&old), &new, &running(&["db", "app", "old"]));
        assert_eq!(plan.stop_order, ["old", "app", "db"]);
        assert_eq!(plan.start_order, ["db", "app", "web"]);
        let reasons: BTreeMap<&str, (ServiceAction, &[String])> = plan
            .services
            .iter()
            .map(|c| (c.name.as_str(), (c.action, c.reasons.as_slice())))
            .collect();
        assert_eq!(reasons["web"].0, ServiceAction::Start);
        assert_eq!(reasons["web"].1, ["new service"]);
        assert_eq!(reasons["old"].1, ["service removed"]);
        assert_eq!(reasons["app"].1, ["argv changed"]);
    }

    #[test]
    fn an_unchanged_service_starts_only_when_not_running() {
        let m = manifest(vec![service("a", "/a", &[]), service("b", "/b", &[])]);
        let plan = diff(Some(&m), &m, &running(&["a"]));
        assert_eq!(plan.start_order, ["b"]);
        assert_eq!(plan.services[0].reasons, ["not running"]);
        assert_eq!(plan.unchanged, 1);
        assert!(diff(Some(&m), &m, &running(&["a", "b"])).is_empty());
    }

    #[test]
    fn on_change_picks_reload_or_keep_and_triggers_follow_etc_files() {
        let mut reload = service("web", "/web", &[]);
        reload.service.on_change = OnChange::Reload;
        reload.service.restart_triggers = vec!["/etc/nginx.conf".into()];
        let reload = with_hash(reload.service);
        let mut old = manifest(vec![reload.clone(), service("x", "/x", &[])]);
        let etc = |hash: &str| EtcEntry {
            mode: "0444".into(),
            user: "root".into(),
            group: "root".into(),
            hash: Some(hash.into()),
            source: None,
        };
        old.etc.insert("nginx.conf".into(), etc("1"));
        let mut new = old.clone();
        new.etc.insert("nginx.conf".into(), etc("2"));
        let mut keep = service("x", "/x2", &[]);
        keep.service.on_change = OnChange::Nothing;
        new.services.insert("x".into(), with_hash(keep.service));
        let plan = diff(Some(&old), &new, &running(&["web", "x"]));
        assert_eq!(plan.reload_order, ["web"]);
        assert_eq!(
            plan.services[0].reasons,
            ["restart trigger /etc/nginx.conf changed"]
        );
        assert_eq!(plan.services[1].action, ServiceAction::Keep);
        assert!(plan.start_order.is_empty() && plan.stop_order.is_empty());
        assert_eq!(plan.etc[0].reason, "contents changed");
        // Not running: there is nothing to reload, so it starts.
        let plan = diff(Some(&old), &new, &running(&["x"]));
        assert_eq!(plan.start_order, ["web"]);
    }

    #[test]
    fn a_file_in_the_way_is_backed_up_and_a_dependency_cycle_is_reported() {
        let mut new = manifest(vec![service("a", "/a", &["b"]), service("b", "/b", &["a"])]);
        new.etc.insert(
            "motd".into(),
            EtcEntry {
                mode: "0444".into(),
                user: "root".into(),
                group: "root".into(),
                hash: Some("h".into()),
                source: None,
            },
        );
        let observed = Observed {
            etc_unmanaged: ["motd".to_owned()].into(),
            ..Observed::default()
        };
        let plan = diff(None, &new, &observed);
        assert!(plan.etc[0].backup);
        assert_eq!(plan.start_order, ["a", "b"]);
        assert!(plan.warnings[0].contains("cycle"), "{:?}", plan.warnings);
    }
}
