//! Running a plan: at most `max_jobs` builds at once, longest chains
//! first, outputs registered in groups.
//!
//! The calling thread schedules: it keeps, for every job, the number of
//! dependencies not yet done and heaps of ready jobs ordered by priority,
//! so that finishing a job costs work in proportion to its own dependents,
//! never to the size of the graph. Process builds, fetches and downloads
//! run on up to `max_jobs` reused worker threads; builtin builders run on
//! the scheduling thread in rounds (they take microseconds). Finished jobs
//! are registered in groups by a registrar thread, so that scheduling goes
//! on while a group is synced and committed; a group goes when something
//! may wait for it, when it is large or after a short delay, so ten
//! thousand small builds do not cost ten thousand syncs.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use bigtop_core::closure::{CycleError, ReferenceGraph};
use bigtop_core::content_address::ContentAddressMethod;
use bigtop_core::derivation::{Derivation, DerivationOutput, OutputName};
use bigtop_core::hash::{Hash, HashAlgo};
use bigtop_core::{nar, StorePath};

use super::build_dir::BuildDirSlot;
use super::jobserver::Jobserver;
use super::log::LogSink;
use super::observer::{Activity, BuildObserver, Silent};
use super::plan::{self, JobKind, Plan, Substituter};
use super::{builtin, process, BuildFailure, BuildOptions, FailureKind, Interrupt, Sandboxing};
use crate::error::{Chain, Error};
use crate::fs::{canonicalize, remove_tree};
use crate::scan::ReferenceScanner;
use crate::store::lock::LockSet;
use crate::store::{PathInfo, Store};

/// Runs plans against a store. See the [build module docs](crate::build).
pub struct Builder<'s> {
    store: &'s Store,
    options: BuildOptions,
    substituters: Vec<&'s dyn Substituter>,
    observer: &'s dyn BuildObserver,
}

impl std::fmt::Debug for Builder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("store", &self.store.root())
            .field("options", &self.options)
            .field("substituters", &self.substituters.len())
            .finish_non_exhaustive()
    }
}

/// What a successful [`Builder::build`] produced.
#[derive(Debug, Clone, Default)]
pub struct BuildReport {
    /// For every target, its wanted outputs' paths.
    pub outputs: BTreeMap<StorePath, BTreeMap<OutputName, StorePath>>,
    /// Derivations built (builtin ones included).
    pub built: usize,
    /// Paths fetched from substituters.
    pub fetched: usize,
    /// In check mode: each rebuilt output and whether it came out
    /// bit-identical to the registered one.
    pub checks: Vec<CheckResult>,
}

/// The result of rebuilding one output in check mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// The derivation.
    pub drv: StorePath,
    /// The output path.
    pub path: StorePath,
    /// The registered NAR hash.
    pub expected: Hash,
    /// The rebuilt one.
    pub got: Hash,
}

impl CheckResult {
    /// Whether the rebuild was bit-identical.
    pub fn identical(&self) -> bool {
        self.expected == self.got
    }
}

/// How often a path is fetched from its substituter before the fetch
/// fails (and the path is built instead, if it can be).
pub const FETCH_TRIES: u32 = 3;

impl<'s> Builder<'s> {
    /// A builder for `store` with default options, no substituters and no
    /// observer.
    pub fn new(store: &'s Store) -> Self {
        Builder {
            store,
            options: BuildOptions::default(),
            substituters: Vec::new(),
            observer: &Silent,
        }
    }

    /// Sets the options.
    pub fn options(mut self, options: BuildOptions) -> Self {
        self.options = options;
        self
    }

    /// Adds a substituter, asked after the ones added before.
    pub fn substituter(mut self, s: &'s dyn Substituter) -> Self {
        self.substituters.push(s);
        self
    }

    /// Sets the observer of progress.
    pub fn observer(mut self, o: &'s dyn BuildObserver) -> Self {
        self.observer = o;
        self
    }

    /// The plan for `targets`, without doing anything.
    pub fn dry_run(&self, targets: &[(StorePath, BTreeSet<OutputName>)]) -> Result<Plan, Error> {
        plan::plan(self.store, targets, &self.substituters, self.options.check)
    }

    /// Plans and realises `targets` (`.drv` paths with the outputs wanted;
    /// empty means all). Fails with every job that failed if any did.
    pub fn build(
        &self,
        targets: &[(StorePath, BTreeSet<OutputName>)],
    ) -> Result<BuildReport, super::Error> {
        if self.options.sandbox == Sandboxing::Required {
            super::sandbox_available()?;
        }
        // Before the plan reads them: a collection must not take the
        // `.drv`s this run builds from (their outputs record them as
        // deriver), nor, through their references, any `.drv` or source
        // below them. Rooted for the handle's life, as Nix's are.
        self.store
            .add_temp_roots(targets.iter().map(|(drv, _)| drv))?;
        let plan = self.dry_run(targets)?;
        if !plan.jobs.is_empty() {
            // What a crashed run left (scratch roots, build dirs) goes
            // before this one adds its own; nothing to do costs nothing.
            self.store.clean_processes()?;
        }
        self.observer.planned(&plan);
        let mut report = self.run_falling_back(targets, plan)?;
        for (drv, wanted) in targets {
            let recorded = self.store.derivation_outputs(drv)?;
            let outs = recorded
                .into_iter()
                .filter(|(o, _)| wanted.is_empty() || wanted.contains(o))
                .collect();
            report.outputs.insert(drv.clone(), outs);
        }
        Ok(report)
    }

    /// Runs `plan`; when fetches failed (each tried [`FETCH_TRIES`]
    /// times) and nothing else did, plans again without asking the
    /// substituters that failed for those paths, so that another one
    /// provides them or they are built from their derivations (and then
    /// so is what refers to them: a fetched path's references must be
    /// there first), and runs that. What was done meanwhile stays done.
    /// When a path can be neither fetched nor built (a source, not an
    /// output), the fetch's failure is what is reported.
    fn run_falling_back(
        &self,
        targets: &[(StorePath, BTreeSet<OutputName>)],
        plan: Plan,
    ) -> Result<BuildReport, super::Error> {
        let mut avoid: BTreeSet<(StorePath, usize)> = BTreeSet::new();
        let mut plan = plan;
        let mut total = BuildReport::default();
        loop {
            let (report, failures) = self.run(&plan)?;
            total.built += report.built;
            total.fetched += report.fetched;
            total.checks.extend(report.checks);
            if failures.is_empty() {
                return Ok(total);
            }
            let fetches: Vec<&BuildFailure> = failures
                .iter()
                .filter(|f| matches!(f.kind, FailureKind::Fetch(_)))
                .collect();
            let only_fetches = failures.iter().all(|f| {
                matches!(
                    f.kind,
                    FailureKind::Fetch(_) | FailureKind::DependencyFailed(_)
                )
            });
            // Each failed fetch, with the substituter it came from: that
            // one is not asked for it again, the next one may be.
            let failed: Vec<(StorePath, usize)> = fetches
                .iter()
                .filter_map(|f| {
                    plan.jobs.iter().find_map(|j| match &j.kind {
                        JobKind::Fetch {
                            path, substituter, ..
                        } if *path == f.path => Some((path.clone(), *substituter)),
                        _ => None,
                    })
                })
                .collect();
            let new = failed.iter().any(|f| !avoid.contains(f));
            if fetches.is_empty() || !only_fetches || !new {
                return Err(super::Error::BuildFailed(failures));
            }
            avoid.extend(failed);
            let again = plan::plan_avoiding(
                self.store,
                targets,
                &self.substituters,
                self.options.check,
                &avoid,
            );
            let Ok(again) = again else {
                return Err(super::Error::BuildFailed(failures));
            };
            for f in &fetches {
                self.observer.fell_back(&f.path);
            }
            self.observer.planned(&again);
            plan = again;
        }
    }

    /// Runs `plan`: what was done, and every job that failed.
    fn run(&self, plan: &Plan) -> Result<(BuildReport, Vec<BuildFailure>), super::Error> {
        let mut report = BuildReport::default();
        let n = plan.jobs.len();
        let mut waiting: Vec<usize> = plan.jobs.iter().map(|j| j.deps.len()).collect();
        // Builtins never wait for a slot, so they get their own heap: a
        // process build waiting for one must not hold them back.
        let mut ready = Ready::default();
        for (i, j) in plan.jobs.iter().enumerate() {
            if j.deps.is_empty() {
                ready.push(plan, i);
            }
        }
        let jobserver = if plan.jobs.iter().any(|j| needs_token(&j.kind)) {
            Some(Jobserver::new(self.options.cores).map_err(|e| Error::Io {
                action: "create",
                path: "a jobserver pipe".into(),
                source: e,
            })?)
        } else {
            None
        };
        let jobserver = jobserver.as_ref();
        let mut failures: Vec<BuildFailure> = Vec::new();
        let mut done = 0usize;
        let mut running = 0usize;
        // Process builds holding a token.
        let mut holding = 0usize;
        let mut stopping = false;
        let interrupted = || {
            self.options
                .interrupt
                .as_ref()
                .is_some_and(Interrupt::fired)
        };
        let max_jobs = self.options.max_jobs.max(1);
        let (job_tx, job_rx) = mpsc::channel::<(usize, bool)>();
        let queue = std::sync::Mutex::new(job_rx);
        let (reg_tx, reg_rx) = mpsc::channel::<Vec<(usize, Finished<'s>)>>();
        std::thread::scope(|scope| -> Result<(), Error> {
            let (tx, rx) = mpsc::channel::<Event<'s>>();
            // Owned by this closure, so that any way out of it ends the
            // workers' and the registrar's queues (and the scope can join
            // them).
            let job_tx = job_tx;
            let reg_tx = reg_tx;
            // Registration has a thread of its own, so that the scheduler
            // goes on starting builds while a group is synced and
            // committed; whatever finishes meanwhile forms the next group.
            {
                let tx = tx.clone();
                scope.spawn(move || {
                    for mut group in reg_rx {
                        let r = self.register(&mut group).map_err(|e| Chain(&e).to_string());
                        if tx.send(Event::Registered(group, r)).is_err() {
                            break;
                        }
                    }
                });
            }
            let mut to_register: Vec<(usize, Finished<'s>)> = Vec::new();
            let mut registering = false;
            let mut oldest = std::time::Instant::now();
            let mut workers = 0usize;
            loop {
                // After a failure without keep_going, or an interrupt,
                // nothing new starts.
                stopping |= interrupted();
                let mut out_of_tokens = false;
                while let Some(i) = ready.threaded.peek().filter(|_| !stopping).map(|e| e.1 .0) {
                    if running >= max_jobs {
                        break;
                    }
                    let token = needs_token(&plan.jobs[i].kind);
                    if let (true, Some(js)) = (token, jobserver) {
                        if !js.try_acquire() {
                            if holding > 0 {
                                out_of_tokens = true;
                                break;
                            }
                            // No build holds one, so every token is lost
                            // (with killed builders): the pool starts over.
                            js.refill().map_err(|e| Error::Io {
                                action: "refill",
                                path: "the jobserver pipe".into(),
                                source: e,
                            })?;
                            if !js.try_acquire() {
                                out_of_tokens = true;
                                break;
                            }
                        }
                        holding += 1;
                    }
                    ready.threaded.pop();
                    running += 1;
                    if workers < running {
                        // Workers are made as needed, at most max_jobs, and
                        // reused: a thread per build costs a stack's page
                        // faults each time.
                        workers += 1;
                        let tx = tx.clone();
                        let queue = &queue;
                        scope.spawn(move || {
                            let mut dir = BuildDirSlot::default();
                            loop {
                                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                                let Ok((i, token)) = next else { break };
                                let js = jobserver.filter(|_| token);
                                let r = self.run_job(&plan.jobs[i], js, &mut dir);
                                if tx.send(Event::Done(i, token, r)).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    let _ = job_tx.send((i, token));
                }
                // A group goes when something may wait for it (nothing else
                // is ready, or nothing runs), when it is big, or when it has
                // waited long enough; until then builds go on and the group
                // grows, so that a thousand quick builds are a few
                // registrations (each with a file-system sync), not a
                // thousand.
                let due = !to_register.is_empty()
                    && (running == 0
                        || stopping
                        || (ready.threaded.is_empty() && ready.inline.is_empty())
                        || to_register.len() >= REGISTER_GROUP
                        || oldest.elapsed() >= REGISTER_DELAY);
                if due && !registering {
                    registering = true;
                    let _ = reg_tx.send(std::mem::take(&mut to_register));
                }
                // A bounded round of builtins, so that finished process
                // builds are picked up between rounds.
                let mut round = Vec::new();
                while round.len() < INLINE_ROUND && !stopping {
                    let Some(e) = ready.inline.pop() else { break };
                    round.push(e.1 .0);
                }
                let mut finished: Vec<(usize, Result<Finished<'s>, BuildFailure>)> =
                    if round.is_empty() {
                        Vec::new()
                    } else {
                        self.run_inline_round(plan, &round)
                    };
                let mut events: Vec<Event<'s>> = Vec::new();
                if finished.is_empty() {
                    if running == 0 && !registering {
                        break;
                    }
                    self.observer.progress(done, running, n - done - running);
                    if out_of_tokens || (!registering && !to_register.is_empty()) {
                        // Builders return tokens without ending (a make
                        // finishing a job), and a waiting group falls due:
                        // look again soon.
                        match rx.recv_timeout(TOKEN_POLL) {
                            Ok(e) => events.push(e),
                            Err(mpsc::RecvTimeoutError::Timeout) => continue,
                            Err(mpsc::RecvTimeoutError::Disconnected) => {
                                unreachable!("the scheduler holds a sender")
                            }
                        }
                    } else {
                        events.push(rx.recv().expect("the scheduler holds a sender"));
                    }
                }
                events.extend(rx.try_iter());
                for event in events {
                    match event {
                        Event::Done(i, token, r) => {
                            running -= 1;
                            if token {
                                holding -= 1;
                                if let Some(js) = jobserver {
                                    js.release();
                                }
                            }
                            finished.push((i, r));
                        }
                        Event::Registered(group, r) => {
                            registering = false;
                            for (i, mut f) in group {
                                match &r {
                                    Ok(()) => {
                                        done += 1;
                                        report.built += f.built as usize;
                                        report.fetched += f.fetched as usize;
                                        report.checks.append(&mut f.checks);
                                        self.observer.finished(plan.jobs[i].path(), &f.paths);
                                        for &d in &plan.jobs[i].dependents {
                                            waiting[d] -= 1;
                                            if waiting[d] == 0 {
                                                ready.push(plan, d);
                                            }
                                        }
                                    }
                                    Err(e) => {
                                        let failure = BuildFailure {
                                            path: plan.jobs[i].path().clone(),
                                            kind: FailureKind::Register(e.clone()),
                                            log_tail: Vec::new(),
                                        };
                                        self.observer.failed(&failure);
                                        failures.push(failure);
                                        stopping |= !self.options.keep_going;
                                        done += 1 + self.fail_dependents(
                                            plan,
                                            i,
                                            &mut waiting,
                                            &mut failures,
                                        );
                                    }
                                }
                            }
                            self.observer.progress(done, running, n - done - running);
                        }
                    }
                }
                for (i, r) in finished {
                    match r {
                        Ok(f) => {
                            if to_register.is_empty() {
                                oldest = std::time::Instant::now();
                            }
                            to_register.push((i, f));
                        }
                        Err(failure) => {
                            self.observer.failed(&failure);
                            failures.push(failure);
                            if !self.options.keep_going {
                                stopping = true;
                            }
                            done += 1 + self.fail_dependents(plan, i, &mut waiting, &mut failures);
                        }
                    }
                }
            }
            Ok(())
        })?;
        if interrupted() {
            Err(super::Error::Interrupted)
        } else {
            Ok((report, failures))
        }
    }

    /// Marks every job downstream of `i` as failed (they never become
    /// ready); returns how many.
    fn fail_dependents(
        &self,
        plan: &Plan,
        i: usize,
        waiting: &mut [usize],
        failures: &mut Vec<BuildFailure>,
    ) -> usize {
        let mut stack = vec![i];
        let mut count = 0;
        while let Some(j) = stack.pop() {
            for &d in &plan.jobs[j].dependents {
                // usize::MAX marks a job already failed this way.
                if waiting[d] != usize::MAX {
                    waiting[d] = usize::MAX;
                    count += 1;
                    failures.push(BuildFailure {
                        path: plan.jobs[d].path().clone(),
                        kind: FailureKind::DependencyFailed(plan.jobs[i].path().clone()),
                        log_tail: Vec::new(),
                    });
                    stack.push(d);
                }
            }
        }
        count
    }

    /// Registers a group of finished jobs in one batch.
    fn register(&self, group: &mut [(usize, Finished<'s>)]) -> Result<(), Error> {
        let mut batch = self.store.batch();
        let mut locks = Vec::new();
        for (_, f) in group.iter_mut() {
            for (info, tmp) in f.staged.drain(..) {
                batch.add_built(info, tmp);
            }
            for (drv, out, path) in f.outputs.drain(..) {
                batch.record_output(drv, out, path);
            }
            if let Some(l) = f.locks.take() {
                locks.push(l);
            }
        }
        batch.commit_holding(&mut locks)?;
        Ok(())
    }

    fn run_job(
        &self,
        job: &plan::Job,
        jobserver: Option<&Jobserver>,
        dir: &mut BuildDirSlot,
    ) -> Result<Finished<'s>, BuildFailure> {
        match &job.kind {
            JobKind::Build {
                drv, derivation, ..
            } => self.build_one(drv, derivation, jobserver, dir),
            JobKind::Fetch {
                path,
                substituter,
                info,
            } => {
                self.observer.started(path, Activity::Fetch);
                let fail = |e: Error| BuildFailure {
                    path: path.clone(),
                    kind: FailureKind::Fetch(Chain(&e).to_string()),
                    log_tail: Vec::new(),
                };
                let mut locks = LockSet::new(self.store);
                locks
                    .lock_all_rooting([path], info.info.references.iter())
                    .map_err(fail)?;
                if self.store.is_valid(path).map_err(fail)? {
                    return Ok(Finished::nothing(Some(locks)));
                }
                let s = self.substituters[*substituter];
                // From the start each time (a dropped connection, a stalled
                // server, a NAR corrupted on the way): a staged tree that
                // failed is removed by `stage_nar`.
                // What went wrong on the way (a stream cut or corrupted)
                // may not the next time; the store's own errors would.
                let tmp = crate::error::retrying(FETCH_TRIES, Error::worth_fetching_again, || {
                    s.nar(path).and_then(|mut nar| {
                        crate::store::add::stage_nar(self.store, &info.info, &mut *nar)
                    })
                })
                .map_err(fail)?;
                // References no trusted key vouched for are checked
                // against the contents: one left out would let the
                // collector delete a path still in use. A content
                // address is checked against them too.
                if !info.vouched || info.info.ca.is_some() {
                    if let Err(e) = self.store.check_staged_tree(&info.info, &tmp) {
                        let _ = crate::fs::remove_tree(&tmp);
                        return Err(fail(e));
                    }
                }
                Ok(Finished {
                    staged: vec![(info.info.clone(), tmp)],
                    outputs: Vec::new(),
                    paths: vec![path.clone()],
                    locks: Some(locks),
                    built: false,
                    fetched: true,
                    checks: Vec::new(),
                })
            }
        }
    }

    /// The paths of `derivation`'s outputs, or why it cannot be built
    /// here.
    fn outputs_of(
        &self,
        drv: &StorePath,
        derivation: &Derivation,
    ) -> Result<BTreeMap<OutputName, StorePath>, BuildFailure> {
        let fail = |kind: FailureKind| BuildFailure {
            path: drv.clone(),
            kind,
            log_tail: Vec::new(),
        };
        if !builtin::is_builtin(derivation) && derivation.system != self.options.system {
            return Err(fail(FailureKind::WrongSystem {
                wanted: derivation.system.clone(),
                here: self.options.system.clone(),
            }));
        }
        let dir = self.store.store_dir();
        let mut outputs: BTreeMap<OutputName, StorePath> = BTreeMap::new();
        for name in derivation.outputs.keys() {
            match derivation.output_path(dir, name) {
                Some(p) => outputs.insert(name.clone(), p),
                None => return Err(fail(FailureKind::FloatingOutput(name.clone()))),
            };
        }
        Ok(outputs)
    }

    /// Builds one derivation: locks its outputs, runs the builder (a
    /// process or a builtin), and stages the outputs for registration.
    fn build_one(
        &self,
        drv: &StorePath,
        derivation: &Derivation,
        jobserver: Option<&Jobserver>,
        dir: &mut BuildDirSlot,
    ) -> Result<Finished<'s>, BuildFailure> {
        let io = |e: Error| setup_failure(drv, Chain(&e));
        let outputs = self.outputs_of(drv, derivation)?;
        let inputs = self.inputs_of(derivation).map_err(io)?;
        let mut locks = LockSet::new(self.store);
        locks
            .lock_all_rooting(outputs.values(), inputs.iter())
            .map_err(io)?;
        // Inputs the plan found valid are rooted only now: one collected
        // in between is named here, not as a missing file mid-build.
        let valid = self
            .store
            .valid_among(outputs.values().chain(inputs.iter()))
            .map_err(io)?;
        if let Some(gone) = inputs.iter().find(|p| !valid.contains(*p)) {
            return Err(setup_failure(
                drv,
                format!("input `{gone}` is no longer valid (collected while waiting?)"),
            ));
        }
        let valid: BTreeSet<StorePath> = valid
            .into_iter()
            .filter(|p| outputs.values().any(|o| o == p))
            .collect();
        let check = self.options.check && valid.len() == outputs.len();
        let mut f = if valid.len() == outputs.len() && !check {
            // Another process built it while we waited for the locks.
            Finished::valid(drv, &outputs)
        } else {
            self.make(drv, derivation, &outputs, &inputs, check, jobserver, dir)?
        };
        f.locks = Some(locks);
        Ok(f)
    }

    /// Runs a round of builtins whose dependencies are all done: one lock
    /// transaction and one validity query for the whole round instead of
    /// one each, which is most of what a small builtin costs.
    fn run_inline_round(
        &self,
        plan: &Plan,
        round: &[usize],
    ) -> Vec<(usize, Result<Finished<'s>, BuildFailure>)> {
        if self.options.check || round.len() == 1 {
            return round
                .iter()
                .map(|&i| {
                    (
                        i,
                        self.run_job(&plan.jobs[i], None, &mut BuildDirSlot::default()),
                    )
                })
                .collect();
        }
        let job = |i: usize| match &plan.jobs[i].kind {
            JobKind::Build {
                drv, derivation, ..
            } => (drv, derivation),
            JobKind::Fetch { .. } => unreachable!("only builtins are run inline"),
        };
        let mut results = Vec::with_capacity(round.len());
        let recorded = self
            .store
            .derivation_outputs_many(round.iter().flat_map(|&i| job(i).1.input_drvs.keys()));
        let mut prepared = Vec::with_capacity(round.len());
        for &i in round {
            let (drv, derivation) = job(i);
            let inputs = recorded
                .as_ref()
                .map_err(|e| setup_failure(drv, Chain(e)))
                .and_then(|r| {
                    inputs_from(derivation, r).map_err(|e| setup_failure(drv, Chain(&e)))
                });
            match self
                .outputs_of(drv, derivation)
                .and_then(|o| Ok((o, inputs?)))
            {
                Ok((outputs, inputs)) => prepared.push((i, outputs, inputs)),
                Err(f) => results.push((i, Err(f))),
            }
        }
        let mut locks = LockSet::new(self.store);
        let taken = locks
            .lock_all_rooting(
                prepared.iter().flat_map(|(_, o, _)| o.values()),
                prepared.iter().flat_map(|(_, _, inputs)| inputs.iter()),
            )
            .and_then(|()| {
                self.store
                    .valid_among(prepared.iter().flat_map(|(_, o, _)| o.values()))
            });
        let valid = match taken {
            Ok(v) => v,
            Err(e) => {
                let why = Chain(&e).to_string();
                for (i, _, _) in prepared {
                    results.push((i, Err(setup_failure(job(i).0, why.clone()))));
                }
                return results;
            }
        };
        let mut locks = Some(locks);
        for (i, outputs, inputs) in prepared {
            let (drv, derivation) = job(i);
            let r = if outputs.values().all(|p| valid.contains(p)) {
                Ok(Finished::valid(drv, &outputs))
            } else {
                self.make(
                    drv,
                    derivation,
                    &outputs,
                    &inputs,
                    false,
                    None,
                    &mut BuildDirSlot::default(),
                )
            };
            // The round's locks go with its first success: its group's
            // registration releases them (with a failure's outputs, which
            // are not registered).
            let r = r.map(|mut f| {
                f.locks = locks.take();
                f
            });
            results.push((i, r));
        }
        results
    }

    /// Runs the builder of a locked derivation whose outputs are to be
    /// made (or remade, in check mode) and stages them.
    #[allow(clippy::too_many_arguments)]
    fn make(
        &self,
        drv: &StorePath,
        derivation: &Derivation,
        outputs: &BTreeMap<OutputName, StorePath>,
        inputs: &BTreeSet<StorePath>,
        check: bool,
        jobserver: Option<&Jobserver>,
        dir: &mut BuildDirSlot,
    ) -> Result<Finished<'s>, BuildFailure> {
        let fail = |kind: FailureKind| BuildFailure {
            path: drv.clone(),
            kind,
            log_tail: Vec::new(),
        };
        let io = |e: Error| setup_failure(drv, Chain(&e));
        let builtin = builtin::is_builtin(derivation);
        let activity = match (check, builtin) {
            (true, _) => Activity::Check,
            (false, true) if derivation.builder == builtin::fetch::FETCH_URL => Activity::Download,
            (false, true) => Activity::Builtin,
            (false, false) => Activity::Build,
        };
        self.observer.started(drv, activity);
        let closure = if inputs.is_empty() {
            BTreeSet::new()
        } else {
            self.store.closure(inputs.iter()).map_err(io)?
        };
        // Where outputs are written, and where the builder sees them.
        let run = if builtin {
            // In place (the outputs are locked and not valid; a crash's
            // leftover is removed), or beside the valid ones when checking.
            let mut staging: BTreeMap<OutputName, PathBuf> = BTreeMap::new();
            for (o, p) in outputs {
                let at = if check {
                    self.store.temp_name(p.name())
                } else {
                    let at = self.store.physical(p);
                    remove_tree(&at).map_err(|e| {
                        fail(FailureKind::Setup(format!(
                            "cannot remove `{}`: {e}",
                            at.display()
                        )))
                    })?;
                    at
                };
                staging.insert(o.clone(), at);
            }
            // Only fetches have something worth a log.
            let mut log = if builtin::is_inline(derivation) {
                None
            } else {
                Some(LogSink::new(
                    self.store,
                    drv,
                    self.observer,
                    self.options.log_lines,
                ))
            };
            let mut note = |line: &str| {
                if let Some(log) = &mut log {
                    log.note(line);
                }
            };
            let r = builtin::run(
                self.store, derivation, outputs, &staging, &closure, &mut note,
            )
            .map(|known| (staging, known));
            let tail = log.map(LogSink::finish).unwrap_or_default();
            r.map_err(|e| BuildFailure {
                path: drv.clone(),
                kind: FailureKind::Builtin(Chain(&e).to_string()),
                log_tail: tail,
            })
        } else {
            process::run(
                self.store,
                &self.options,
                drv,
                derivation,
                outputs,
                &closure,
                check,
                self.observer,
                jobserver,
                dir,
            )
            .map(|written| (written, None))
        };
        let (written, known) = run?;
        // Sandboxed outputs were made canonical before they left the
        // builder's private scratch root.
        let canonical = !builtin && self.options.sandbox == Sandboxing::Required;
        let staged = self.stage_outputs(
            drv, derivation, outputs, &closure, written, known, canonical,
        );
        let staged = staged.map_err(fail)?;
        if check {
            let mut checks = Vec::new();
            for (info, tmp) in staged {
                let _ = remove_tree(&tmp);
                let expected = self
                    .store
                    .path_info(&info.path)
                    .map_err(io)?
                    .map(|i| i.nar_hash)
                    .unwrap_or(info.nar_hash);
                checks.push(CheckResult {
                    drv: drv.clone(),
                    path: info.path,
                    expected,
                    got: info.nar_hash,
                });
            }
            let mut f = Finished::nothing(None);
            f.checks = checks;
            f.built = true;
            return Ok(f);
        }
        Ok(Finished {
            paths: outputs.values().cloned().collect(),
            outputs: outputs
                .iter()
                .map(|(o, p)| (drv.clone(), o.clone(), p.clone()))
                .collect(),
            staged,
            locks: None,
            built: true,
            fetched: false,
            checks: Vec::new(),
        })
    }

    /// The store paths a derivation's builder may use: its sources and the
    /// outputs it uses of its input derivations (valid by now).
    fn inputs_of(&self, derivation: &Derivation) -> Result<BTreeSet<StorePath>, Error> {
        if derivation.input_drvs.is_empty() {
            // Many small derivations: no query for them.
            return Ok(derivation.input_srcs.clone());
        }
        let recorded = self
            .store
            .derivation_outputs_many(derivation.input_drvs.keys())?;
        inputs_from(derivation, &recorded)
    }

    /// Checks, canonicalizes, scans and hashes the outputs a builder wrote
    /// (at `written`: in the store's physical root, at their own paths or
    /// under temporary names). On failure nothing is left.
    #[allow(clippy::too_many_arguments)]
    fn stage_outputs(
        &self,
        drv: &StorePath,
        derivation: &Derivation,
        outputs: &BTreeMap<OutputName, StorePath>,
        closure: &BTreeSet<StorePath>,
        written: BTreeMap<OutputName, PathBuf>,
        known: Option<builtin::Written>,
        canonical: bool,
    ) -> Result<Vec<(PathInfo, PathBuf)>, FailureKind> {
        let mut staged: Vec<(PathInfo, PathBuf)> = Vec::new();
        let result = (|| {
            let candidates: Vec<&StorePath> = closure.iter().chain(outputs.values()).collect();
            for (name, path) in outputs {
                let at = &written[name];
                if fs::symlink_metadata(at).is_err() {
                    return Err(FailureKind::OutputMissing(name.clone()));
                }
                // Where the builder left it (its final place, or a
                // temporary name when checking) is where it is registered.
                let tmp = at.clone();
                staged.push((
                    PathInfo::new(
                        path.clone(),
                        Hash::digest(HashAlgo::Blake3, b""),
                        0,
                        BTreeSet::new(),
                    ),
                    tmp.clone(),
                ));
                let mut scanner = ReferenceScanner::new(candidates.iter().copied());
                let (nar_hash, nar_size) = match &known {
                    // Written canonical by a builtin, bytes in hand.
                    Some(w) if outputs.len() == 1 => {
                        scanner.feed(&w.contents);
                        nar::hash_file_bytes(&w.contents, w.executable, HashAlgo::Blake3)
                    }
                    _ => {
                        if !canonical {
                            canonicalize(&tmp, self.store.owner())
                                .map_err(|e| FailureKind::Setup(Chain(&e).to_string()))?;
                        }
                        scanner.scan_path(&tmp).map_err(|e| {
                            FailureKind::Setup(format!("cannot scan output `{name}`: {e}"))
                        })?;
                        nar::hash_path(&tmp, HashAlgo::Blake3).map_err(|e| {
                            FailureKind::BadOutput(name.clone(), Chain(&e).to_string())
                        })?
                    }
                };
                let mut info = PathInfo::new(path.clone(), nar_hash, nar_size, scanner.found());
                info.deriver = Some(drv.clone());
                if let Some(DerivationOutput::Fixed(ca)) = derivation.outputs.get(name) {
                    let got = match ca.method {
                        ContentAddressMethod::Recursive => {
                            nar::hash_path(&tmp, ca.hash.algo()).map(|(h, _)| h)
                        }
                        _ => hash_file(&tmp, ca.hash.algo()),
                    }
                    .map_err(|e| FailureKind::BadOutput(name.clone(), Chain(&e).to_string()))?;
                    if got != ca.hash {
                        return Err(FailureKind::FixedOutputMismatch(Box::new(
                            super::HashMismatch {
                                output: name.clone(),
                                specified: ca.hash,
                                got,
                            },
                        )));
                    }
                    if !info.references.is_empty() {
                        return Err(FailureKind::BadOutput(
                            name.clone(),
                            "a fixed output may not refer to store paths".into(),
                        ));
                    }
                    info.ca = Some(*ca);
                }
                staged.last_mut().expect("pushed").0 = info;
            }
            if outputs.len() > 1 {
                output_cycle(outputs, &staged)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(staged),
            Err(e) => {
                for (_, tmp) in &staged {
                    let _ = remove_tree(tmp);
                }
                for at in written.values() {
                    let _ = remove_tree(at);
                }
                Err(e)
            }
        }
    }
}

/// Fails if outputs refer to each other in a cycle: nothing could then
/// copy or export them each after its references, and the collector would
/// never find one of them unreferenced. Self-references are fine.
fn output_cycle(
    outputs: &BTreeMap<OutputName, StorePath>,
    staged: &[(PathInfo, PathBuf)],
) -> Result<(), FailureKind> {
    let paths: BTreeSet<&StorePath> = outputs.values().collect();
    let graph = ReferenceGraph::new_lenient(staged.iter().map(|(info, _)| {
        let among = info.references.iter().filter(|r| paths.contains(r));
        (info.path.clone(), among.cloned().collect::<Vec<_>>())
    }));
    let Err(CycleError { cycle }) = graph.topo_order() else {
        return Ok(());
    };
    let mut names: Vec<OutputName> = cycle
        .iter()
        .filter_map(|p| {
            outputs
                .iter()
                .find(|(_, q)| *q == p)
                .map(|(o, _)| o.clone())
        })
        .collect();
    // Started at the first name rather than the first path: the message
    // reads the same for every store dir.
    if let Some(first) = names
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.cmp(b.1))
        .map(|(i, _)| i)
    {
        names.rotate_left(first);
    }
    Err(FailureKind::OutputCycle(names))
}

/// The flat hash of a regular file (a fixed output fetched "flat").
fn hash_file(path: &Path, algo: HashAlgo) -> Result<Hash, nar::DumpError> {
    let meta = fs::symlink_metadata(path).map_err(|e| nar::DumpError::Read {
        path: path.to_owned(),
        source: e,
    })?;
    if !meta.is_file() {
        return Err(nar::DumpError::Read {
            path: path.to_owned(),
            source: std::io::Error::other("a flat fixed output must be a regular file"),
        });
    }
    let mut h = bigtop_core::hash::Hasher::new(algo);
    let mut f = fs::File::open(path).map_err(|e| nar::DumpError::Read {
        path: path.to_owned(),
        source: e,
    })?;
    std::io::copy(&mut f, &mut h).map_err(|e| nar::DumpError::Read {
        path: path.to_owned(),
        source: e,
    })?;
    Ok(h.finish())
}

/// Builtins run per round of the scheduling loop, at most.
const INLINE_ROUND: usize = 1024;

/// How often the scheduler looks for a free token while builds run.
const TOKEN_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Whether a job runs a builder process (and so takes a token).
fn needs_token(kind: &JobKind) -> bool {
    matches!(kind, JobKind::Build { derivation, .. } if !builtin::is_builtin(derivation))
}

/// Finished jobs registered together at most.
const REGISTER_GROUP: usize = 1024;

/// How long a finished job waits for its group to be registered, at most
/// (unless the registrar is still busy with the previous group).
const REGISTER_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// What the scheduler hears from workers and the registrar.
enum Event<'s> {
    /// Job `i` ended (`true`: it held a token).
    Done(usize, bool, Result<Finished<'s>, BuildFailure>),
    /// A group was registered, or not (why).
    Registered(Vec<(usize, Finished<'s>)>, Result<(), String>),
}

/// A ready job's place in a heap: priority first, then plan order.
type Entry = (u32, std::cmp::Reverse<usize>);

/// Jobs whose dependencies are done.
#[derive(Default)]
struct Ready {
    /// Builtins run on the scheduling thread.
    inline: BinaryHeap<Entry>,
    /// Process builds, fetches and downloads, on threads of their own.
    threaded: BinaryHeap<Entry>,
}

impl Ready {
    fn push(&mut self, plan: &Plan, i: usize) {
        let job = &plan.jobs[i];
        let e = (job.priority, std::cmp::Reverse(i));
        match &job.kind {
            JobKind::Build { derivation, .. } if builtin::is_inline(derivation) => {
                self.inline.push(e)
            }
            _ => self.threaded.push(e),
        }
    }
}

/// A job that finished, waiting to be registered with its group.
struct Finished<'s> {
    /// Outputs under temporary names, with their metadata.
    staged: Vec<(PathInfo, PathBuf)>,
    /// `(drv, output, path)` to record.
    outputs: Vec<(StorePath, OutputName, StorePath)>,
    /// The paths the job made (for the observer).
    paths: Vec<StorePath>,
    /// Locks on the outputs, released by the registration.
    locks: Option<LockSet<'s>>,
    built: bool,
    fetched: bool,
    checks: Vec<CheckResult>,
}

impl<'s> Finished<'s> {
    fn nothing(locks: Option<LockSet<'s>>) -> Self {
        Finished {
            staged: Vec::new(),
            outputs: Vec::new(),
            paths: Vec::new(),
            locks,
            built: false,
            fetched: false,
            checks: Vec::new(),
        }
    }
}

impl Finished<'_> {
    /// A derivation whose outputs are all valid already: only its outputs
    /// are recorded (another process may have built them).
    fn valid(drv: &StorePath, outputs: &BTreeMap<OutputName, StorePath>) -> Self {
        let mut f = Finished::nothing(None);
        f.outputs = outputs
            .iter()
            .map(|(o, p)| (drv.clone(), o.clone(), p.clone()))
            .collect();
        f
    }
}

/// The failure of `drv` before its builder ran.
fn setup_failure(drv: &StorePath, why: impl std::fmt::Display) -> BuildFailure {
    BuildFailure {
        path: drv.clone(),
        kind: FailureKind::Setup(why.to_string()),
        log_tail: Vec::new(),
    }
}

/// The inputs of `derivation` (see `Builder::inputs_of`), given the
/// recorded outputs of its input derivations.
fn inputs_from(
    derivation: &Derivation,
    recorded: &std::collections::HashMap<StorePath, crate::store::RecordedOutputs>,
) -> Result<BTreeSet<StorePath>, Error> {
    let mut inputs: BTreeSet<StorePath> = derivation.input_srcs.clone();
    for (input, outs) in &derivation.input_drvs {
        for o in outs {
            let (p, _) =
                recorded
                    .get(input)
                    .and_then(|r| r.get(o))
                    .ok_or_else(|| Error::NoSuchOutput {
                        drv: input.clone(),
                        output: o.clone(),
                    })?;
            inputs.insert(p.clone());
        }
    }
    Ok(inputs)
}
