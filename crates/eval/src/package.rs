//! Packages: the builder users write most, in the spirit of nixpkgs'
//! `stdenv.mkDerivation` — a name and version, a source, build-time and
//! run-time dependencies, phases with defaults and hooks, outputs and
//! metadata.
//!
//! A [`Stdenv`] is what every package builds with: a shell, the tools the
//! default phases use (a bootstrap set from the host, or a pinned
//! toolchain), and the generic builder script. [`Package::build`] makes
//! the derivation: the shell runs the script, which puts every input's
//! `bin`, `include` and `lib` on `PATH`, `CPATH` and `LIBRARY_PATH`, then
//! runs the phases in order — unpack, patch, configure, build, check,
//! install, fixup — each `pre<Phase>` hook, the phase (the default or
//! the package's replacement), then `post<Phase>`. The defaults: copy
//! or untar `src` and enter it; apply `patches` with `patch -p1`; run
//! `./configure --prefix=$out` if there is one; `make`, `make check` (when
//! checking), `make install PREFIX=$out prefix=$out` if there is a
//! Makefile; record the run-time inputs in the output.
//!
//! Linking: `LD_RUN_PATH` holds the package's own `lib` and each input's,
//! so a program linking another package's library finds it at run time
//! (and the reference scanner puts that package in its runtime closure)
//! without an `-rpath` of its own. After the phases, every ELF file of
//! every output must find each library it needs in its run path or among
//! the stdenv's own (`LD_LIBRARY_PATH`), or the build fails naming the
//! file and the library; `env("dontCheckLibraries", "1")` turns the check
//! off. Flags (`configure_flag`, `make_flag`) reach their tool as one
//! argument each, spaces and all.
//!
//! ```
//! use bigtop_eval::drv::Platform;
//! use bigtop_eval::package::{OverrideAttrs, Package, Phase, Stdenv};
//! use bigtop_eval::{text, trivial};
//! let p = Platform::default();
//! // A stdenv of host tools the sandbox can see (a real one imports them).
//! let stdenv = Stdenv::new(&p, "/bin/sh", Vec::<bigtop_eval::drv::Str>::new())?;
//! let src = trivial::write_text(&p, "greeting.txt", "hello\n")?;
//! let hello = Package::new("hello")
//!     .version("1.0")
//!     .src(&src)
//!     .phase(Phase::Unpack, "")
//!     .phase(Phase::Install, text!("mkdir -p $out/share && cp {} $out/share/greeting", src))
//!     .description("Says hello")
//!     .build(&stdenv)?;
//! assert_eq!(hello.name(), "hello-1.0");
//! assert_eq!(hello.meta().description.as_deref(), Some("Says hello"));
//! // Replacing one attribute remakes the package from the others.
//! let v2 = hello.override_attrs(|p| p.version("2.0"))?;
//! assert_eq!(v2.name(), "hello-2.0");
//! # Ok::<(), bigtop_eval::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::drv::{Drv, DrvBuilder, Meta, Str};
use crate::platform::Platform;
use crate::{trivial, Error};

/// The generic builder script (POSIX sh).
const SETUP: &str = include_str!("setup.sh");

/// A phase of the generic builder, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Copy or untar `src`, enter it.
    Unpack,
    /// Apply `patches`.
    Patch,
    /// `./configure --prefix=$out` if there is one.
    Configure,
    /// `make` if there is a Makefile.
    Build,
    /// `make check`, when checking.
    Check,
    /// `make install` if there is a Makefile.
    Install,
    /// Record run-time inputs in the output.
    Fixup,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 7] = [
        Phase::Unpack,
        Phase::Patch,
        Phase::Configure,
        Phase::Build,
        Phase::Check,
        Phase::Install,
        Phase::Fixup,
    ];

    /// `Unpack`, `Build`, …: the hooks are `pre<Name>` and `post<Name>`.
    fn title(self) -> &'static str {
        match self {
            Phase::Unpack => "Unpack",
            Phase::Patch => "Patch",
            Phase::Configure => "Configure",
            Phase::Build => "Build",
            Phase::Check => "Check",
            Phase::Install => "Install",
            Phase::Fixup => "Fixup",
        }
    }

    /// The variable that replaces the phase: `unpackPhase`, ….
    fn variable(self) -> String {
        let t = self.title();
        format!("{}{}Phase", t[..1].to_ascii_lowercase(), &t[1..])
    }
}

/// What packages build with: a shell, the tools the default phases use,
/// and variables every package gets. Cheap to clone.
#[derive(Clone)]
pub struct Stdenv(Arc<StdenvInner>);

#[derive(Clone)]
struct StdenvInner {
    platform: Platform,
    shell: Str,
    tools: Vec<Str>,
    setup: Drv,
    env: BTreeMap<String, Str>,
}

impl fmt::Debug for Stdenv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stdenv")
            .field("shell", &self.0.shell)
            .field("tools", &self.0.tools)
            .finish_non_exhaustive()
    }
}

impl Stdenv {
    /// A stdenv whose builder runs `shell` (a POSIX shell: a program in a
    /// bootstrap or package output, or `/bin/sh`, which the sandbox
    /// provides) with `tools` (store trees with `bin/`, `include/`,
    /// `lib/`) on the search paths.
    pub fn new<I>(platform: &Platform, shell: impl Into<Str>, tools: I) -> Result<Stdenv, Error>
    where
        I: IntoIterator,
        I::Item: Into<Str>,
    {
        let setup = trivial::write_text(platform, "bigtop-setup.sh", SETUP)?;
        Ok(Stdenv(Arc::new(StdenvInner {
            platform: platform.clone(),
            shell: shell.into(),
            tools: tools.into_iter().map(Into::into).collect(),
            setup,
            env: BTreeMap::new(),
        })))
    }

    /// Sets a variable every package built with it gets (a package's own
    /// setting wins).
    pub fn with_env(&self, key: impl Into<String>, value: impl Into<Str>) -> Stdenv {
        let mut inner = (*self.0).clone();
        inner.env.insert(key.into(), value.into());
        Stdenv(Arc::new(inner))
    }

    /// The platform packages are built for.
    pub fn platform(&self) -> &Platform {
        &self.0.platform
    }

    /// The shell the builder runs.
    pub fn shell(&self) -> &Str {
        &self.0.shell
    }
}

/// A package under construction. Every setter documents its default; an
/// unset phase runs its default.
#[derive(Clone, Debug)]
#[must_use = "a package is made by `build`"]
pub struct Package {
    name: String,
    version: Option<String>,
    src: Option<Str>,
    build_inputs: Vec<Str>,
    runtime_inputs: Vec<Str>,
    phases: BTreeMap<Phase, Str>,
    pre: BTreeMap<Phase, Vec<Str>>,
    post: BTreeMap<Phase, Vec<Str>>,
    env: BTreeMap<String, Str>,
    outputs: Vec<String>,
    meta: Meta,
    check: bool,
    configure_flags: Vec<Str>,
    make_flags: Vec<Str>,
    patches: Vec<Str>,
}

impl Package {
    /// A package named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Package {
            name: name.into(),
            version: None,
            src: None,
            build_inputs: Vec::new(),
            runtime_inputs: Vec::new(),
            phases: BTreeMap::new(),
            pre: BTreeMap::new(),
            post: BTreeMap::new(),
            env: BTreeMap::new(),
            outputs: Vec::new(),
            meta: Meta::default(),
            check: false,
            configure_flags: Vec::new(),
            make_flags: Vec::new(),
            patches: Vec::new(),
        }
    }

    /// The version: the derivation is named `name-version`. Default: none.
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = Some(v.into());
        self
    }

    /// The source: a [`Source`](crate::source::Source), a fetched output,
    /// any store path in a `Str`. Default: none (unpack does nothing).
    pub fn src(mut self, src: impl Into<Str>) -> Self {
        self.src = Some(src.into());
        self
    }

    /// A build-time dependency: its `bin`, `include` and `lib` are on the
    /// search paths while building.
    pub fn build_input(mut self, input: impl Into<Str>) -> Self {
        self.build_inputs.push(input.into());
        self
    }

    /// A run-time dependency: on the search paths while building too, and
    /// recorded in the output (`share/bigtop/runtime-inputs`) so that it is
    /// in the output's runtime closure.
    pub fn runtime_input(mut self, input: impl Into<Str>) -> Self {
        self.runtime_inputs.push(input.into());
        self
    }

    /// Replaces a phase by `script` (shell text; empty to skip it).
    pub fn phase(mut self, phase: Phase, script: impl Into<Str>) -> Self {
        self.phases.insert(phase, script.into());
        self
    }

    /// Runs `script` before a phase (after earlier `pre` hooks).
    pub fn pre(mut self, phase: Phase, script: impl Into<Str>) -> Self {
        self.pre.entry(phase).or_default().push(script.into());
        self
    }

    /// Runs `script` after a phase (after earlier `post` hooks).
    pub fn post(mut self, phase: Phase, script: impl Into<Str>) -> Self {
        self.post.entry(phase).or_default().push(script.into());
        self
    }

    /// Sets an environment variable of the build.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<Str>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// The outputs, the first being the default. Default: `out` alone.
    pub fn outputs<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.outputs = names.into_iter().map(Into::into).collect();
        self
    }

    /// Runs the check phase. Default: off.
    pub fn do_check(mut self, on: bool) -> Self {
        self.check = on;
        self
    }

    /// Adds a flag for `./configure`: one argument, spaces and all.
    pub fn configure_flag(mut self, flag: impl Into<Str>) -> Self {
        self.configure_flags.push(flag.into());
        self
    }

    /// Adds a flag for every `make`: one argument, spaces and all
    /// (`EXTRA_CFLAGS=-DA -Werror=x`). In a phase of your own, split
    /// `$makeFlags` on newlines only (`IFS=<newline>; set -f`), as the
    /// default phases do.
    pub fn make_flag(mut self, flag: impl Into<Str>) -> Self {
        self.make_flags.push(flag.into());
        self
    }

    /// Adds a patch, applied with `patch -p1` in order.
    pub fn patch(mut self, patch: impl Into<Str>) -> Self {
        self.patches.push(patch.into());
        self
    }

    /// All metadata at once.
    pub fn meta(mut self, meta: Meta) -> Self {
        self.meta = meta;
        self
    }

    /// One line on what it is.
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.meta.description = Some(d.into());
        self
    }

    /// Where it lives.
    pub fn homepage(mut self, h: impl Into<String>) -> Self {
        self.meta.homepage = Some(h.into());
        self
    }

    /// Its license, as an SPDX expression.
    pub fn license(mut self, l: impl Into<String>) -> Self {
        self.meta.license = Some(l.into());
        self
    }

    /// A system it builds on (none given: any).
    pub fn platform(mut self, system: impl Into<String>) -> Self {
        self.meta.platforms.push(system.into());
        self
    }

    /// The derivation name: `name-version`, or `name`.
    pub fn full_name(&self) -> String {
        match &self.version {
            Some(v) => format!("{}-{v}", self.name),
            None => self.name.clone(),
        }
    }

    /// Makes the derivation with `stdenv`.
    pub fn build(self, stdenv: &Stdenv) -> Result<Drv, Error> {
        let s = &stdenv.0;
        let mut d = DrvBuilder::new(self.full_name())
            .builder(s.shell.clone())
            .args([Str::from("-e"), Str::from(&s.setup)])
            .outputs(self.outputs.clone())
            .meta(self.meta.clone());
        for (k, v) in &s.env {
            d = d.env(k.clone(), v.clone());
        }
        d = d
            .env("name", self.full_name())
            .env("pname", self.name.clone())
            .env("stdenvTools", Str::join(&s.tools, " "))
            // The outputs' names, for the phases that walk every output.
            .env(
                "outputs",
                if self.outputs.is_empty() {
                    "out".to_owned()
                } else {
                    self.outputs.join(" ")
                },
            )
            .env("buildInputs", Str::join(&self.build_inputs, " "))
            .env("runtimeInputs", Str::join(&self.runtime_inputs, " "));
        if let Some(v) = &self.version {
            d = d.env("version", v.clone());
        }
        if let Some(src) = &self.src {
            d = d.env("src", src.clone());
        }
        if self.check {
            d = d.env("doCheck", "1");
        }
        // One flag a line: `setup.sh` splits these on newlines only, so a
        // flag with spaces (`EXTRA_CFLAGS=-DA -Werror=x`) reaches the tool
        // as one argument.
        for (var, kind, list) in [
            ("configureFlags", "configure", &self.configure_flags),
            ("makeFlags", "make", &self.make_flags),
        ] {
            if let Some(bad) = list.iter().find(|f| f.as_str().contains('\n')) {
                return Err(Error::BadFlag {
                    package: self.full_name(),
                    kind,
                    flag: bad.as_str().to_owned(),
                });
            }
            if !list.is_empty() {
                d = d.env(var, Str::join(list, "\n"));
            }
        }
        if !self.patches.is_empty() {
            d = d.env("patches", Str::join(&self.patches, " "));
        }
        for (phase, script) in &self.phases {
            d = d.env(phase.variable(), script.clone());
        }
        for (hooks, prefix) in [(&self.pre, "pre"), (&self.post, "post")] {
            for (phase, scripts) in hooks {
                d = d.env(
                    format!("{prefix}{}", phase.title()),
                    Str::join(scripts, "\n"),
                );
            }
        }
        for (k, v) in &self.env {
            d = d.env(k.clone(), v.clone());
        }
        let origin = Arc::new((self, stdenv.clone()));
        let drv = d.build(&s.platform)?;
        Ok(drv.with_package(origin))
    }
}

/// `override_attrs` for the derivations the package builder makes: an
/// extension of [`Drv`] here, where [`Package`] is, since the derivation
/// layer below cannot name it.
pub trait OverrideAttrs {
    /// The same package with some attributes changed — nixpkgs'
    /// `overrideAttrs`: `change` gets the package's attributes and returns
    /// the new ones, built with the same stdenv.
    fn override_attrs(&self, change: impl FnOnce(Package) -> Package) -> Result<Drv, Error>;
}

impl OverrideAttrs for Drv {
    fn override_attrs(&self, change: impl FnOnce(Package) -> Package) -> Result<Drv, Error> {
        let Some((package, stdenv)) = self
            .package_origin()
            .and_then(|made| made.downcast_ref::<(Package, Stdenv)>())
        else {
            return Err(Error::NotOverridable {
                name: self.name().to_owned(),
                why: "it was not made by the package builder",
            });
        };
        change(package.clone()).build(stdenv)
    }
}
