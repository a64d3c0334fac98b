//! Asking a machine what it runs and whether it still is what its
//! generation says: `status` and `verify`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::Error;
use crate::machine::Machine;
use crate::services::ServiceState;

/// What a machine runs.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The running toplevel (`/run/current-system`).
    pub current: Option<String>,
    /// Its generation, if it is one.
    pub generation: Option<u64>,
    /// The system's name and release, from its manifest.
    pub name: Option<String>,
    /// The release it was built from.
    pub release: Option<String>,
    /// What the machine booted.
    pub booted: Option<String>,
    /// Every declared service: its state and whether its readiness check
    /// passes now.
    pub services: BTreeMap<String, ServiceStatus>,
    /// An activation was interrupted and has not been finished.
    pub interrupted: bool,
}

/// A service's state.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// What its supervisor says.
    pub state: Option<ServiceState>,
    /// Whether its readiness check passes now (`None`: it has none).
    pub ready: Option<bool>,
}

/// How a machine differs from its running generation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Drift {
    /// Managed /etc files changed or removed by hand.
    pub etc: Vec<String>,
    /// Services that should run but do not.
    pub services_down: Vec<String>,
    /// Declared users missing from /etc/passwd.
    pub users_missing: Vec<String>,
    /// Declared groups missing from /etc/group.
    pub groups_missing: Vec<String>,
}

impl Drift {
    /// Whether the machine is exactly what its generation says.
    pub fn is_empty(&self) -> bool {
        self.etc.is_empty()
            && self.services_down.is_empty()
            && self.users_missing.is_empty()
            && self.groups_missing.is_empty()
    }
}

impl Machine {
    /// What the machine runs, service by service.
    pub fn status(&self) -> Result<Status, Error> {
        let dir = self.store().store_dir().clone();
        let current = self.running_system()?;
        let states = self.services().states()?;
        let mut services = BTreeMap::new();
        if let Some(sys) = &current {
            for (name, s) in &sys.manifest.services {
                let state = states.get(name).copied();
                let ready = s
                    .service
                    .ready
                    .as_ref()
                    .map(|r| state.is_some_and(|st| st.up) && self.check_passes(r));
                services.insert(name.clone(), ServiceStatus { state, ready });
            }
        }
        let generation = match &current {
            Some(s) => self
                .generations()?
                .iter()
                .rev()
                .find(|g| g.toplevel == s.toplevel)
                .map(|g| g.number),
            None => None,
        };
        Ok(Status {
            current: current.as_ref().map(|s| dir.full(&s.toplevel)),
            generation,
            name: current.as_ref().map(|s| s.manifest.name.clone()),
            release: current.as_ref().and_then(|s| s.manifest.release.clone()),
            booted: self.booted_system()?.map(|p| dir.full(&p)),
            services,
            interrupted: self.state_dir().join("journal.json").exists(),
        })
    }

    /// How the machine differs from its running generation: nothing if
    /// nothing runs.
    pub fn verify(&self) -> Result<Drift, Error> {
        let Some(sys) = self.running_system()? else {
            return Ok(Drift::default());
        };
        let etc = self.etc();
        let record = etc.record()?;
        let states = self.services().states()?;
        let ids = crate::users::Accounts::read(&self.path("/etc"), &self.state_dir())?.ids();
        Ok(Drift {
            etc: etc.drifted(&record)?.into_iter().collect(),
            services_down: sys
                .manifest
                .services
                .keys()
                .filter(|n| !states.get(*n).is_some_and(|s| s.up))
                .cloned()
                .collect(),
            users_missing: sys
                .manifest
                .users
                .keys()
                .filter(|u| ids.uid(u).is_none())
                .cloned()
                .collect(),
            groups_missing: sys
                .manifest
                .groups
                .keys()
                .filter(|g| ids.gid(g).is_none())
                .cloned()
                .collect(),
        })
    }
}
