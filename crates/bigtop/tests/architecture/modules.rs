//! The module graph inside a crate, read from its source: which module
//! names which, and the cycles among siblings.
//!
//! DESIGN.md's rule: a module uses its parent and the helpers below it,
//! never a sibling that uses it back. So the graph that must be acyclic is,
//! at every level of the module tree, the one between siblings: an edge
//! `a::b -> a::c` for every path in `a::b` (or anything under it) that
//! names `a::c` (or anything under it). Paths between a module and its own
//! ancestors or descendants are the tree itself and do not count; neither
//! does code under `#[cfg(test)]`, which may set up whatever it tests with.
//!
//! It reads paths, not types: it sees `use`, paths in code, in macro
//! arguments and in attribute arguments, re-exports and `super::`. It
//! does not see a method called on a type whose `impl` block lives in a
//! sibling (`impl Store` in `gc.rs`, called from `store.rs`), names
//! brought in by a glob (`use super::*`), a macro called by its bare
//! name, a type alias's target, or files placed by `#[path]` or
//! `include!` (modules are found by file location). Keep inherent
//! `impl` blocks of a type in the module that owns its operation, as
//! CONTRIBUTING.md says, and these gaps stay harmless.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// A module's path inside its crate (`[]` is the crate root).
pub type ModPath = Vec<String>;

/// One reference that makes a sibling edge, kept to show where it is.
#[derive(Debug, Clone)]
pub struct Site {
    /// The file, relative to the crate's `src`.
    pub file: PathBuf,
    /// The line.
    pub line: usize,
    /// The path as written, resolved to the crate root.
    pub path: String,
}

/// Sibling edges of one crate: `(scope, from, to)` with the first site
/// found for each.
#[derive(Debug, Default)]
pub struct Graph {
    /// How many source files were read.
    pub files: usize,
    pub edges: BTreeMap<(ModPath, String, String), Site>,
}

/// A cycle among the siblings of `scope`, with the site of each edge.
pub struct Cycle {
    pub scope: ModPath,
    pub members: Vec<String>,
    pub edges: Vec<(String, String, Site)>,
}

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = if self.scope.is_empty() {
            "the crate root".to_owned()
        } else {
            format!("`{}`", self.scope.join("::"))
        };
        write!(f, "modules {:?} of {scope} use each other:", self.members)?;
        for (from, to, site) in &self.edges {
            write!(
                f,
                "\n    {from} -> {to}: `{}` at {}:{}",
                site.path,
                site.file.display(),
                site.line
            )?;
        }
        Ok(())
    }
}

/// Reads every `.rs` file under `src` and builds the sibling graph.
pub fn read_crate(src: &Path) -> Result<Graph, String> {
    let mut files = Vec::new();
    collect_files(src, &mut files)?;
    let mut parsed = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read `{}`: {e}", file.display()))?;
        let ast = syn::parse_file(&text)
            .map_err(|e| format!("cannot parse `{}`: {e}", file.display()))?;
        let rel = file.strip_prefix(src).unwrap_or(file).to_path_buf();
        parsed.push((module_of(&rel), rel, ast));
    }

    // First pass: every module (files and inline `mod x { … }`) and every
    // name a module imports, so that `crate::Error` re-exported from
    // `error` is seen as a use of `error`.
    let mut modules = BTreeSet::new();
    let mut imports: BTreeMap<ModPath, BTreeMap<String, ModPath>> = BTreeMap::new();
    for (module, _, ast) in &parsed {
        let mut v = Collector::new(module.clone());
        v.visit_file(ast);
        modules.extend(v.modules);
        for (name, target) in v.imports {
            imports.entry(name.0).or_default().insert(name.1, target);
        }
    }

    let mut graph = Graph {
        files: parsed.len(),
        ..Graph::default()
    };
    for (module, rel, ast) in &parsed {
        let mut v = Collector::new(module.clone());
        v.visit_file(ast);
        for r in v.refs {
            let target = resolve(&r.absolute, &modules, &imports);
            let Some((scope, from, to)) = sibling_edge(&r.module, &target) else {
                continue;
            };
            graph.edges.entry((scope, from, to)).or_insert(Site {
                file: rel.clone(),
                line: r.line,
                path: format!("crate::{}", r.absolute.join("::")),
            });
        }
    }
    Ok(graph)
}

impl Graph {
    /// Every cycle: one per strongly connected set of siblings.
    pub fn cycles(&self) -> Vec<Cycle> {
        let mut scopes: BTreeMap<&ModPath, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
        for (scope, from, to) in self.edges.keys() {
            scopes
                .entry(scope)
                .or_default()
                .entry(from)
                .or_default()
                .push(to);
        }
        let mut cycles = Vec::new();
        for (scope, adjacency) in scopes {
            for component in strongly_connected(&adjacency) {
                if component.len() < 2 {
                    continue;
                }
                let members: BTreeSet<&str> = component.iter().copied().collect();
                let edges = self
                    .edges
                    .iter()
                    .filter(|((s, f, t), _)| {
                        s == scope && members.contains(f.as_str()) && members.contains(t.as_str())
                    })
                    .map(|((_, f, t), site)| (f.clone(), t.clone(), site.clone()))
                    .collect();
                cycles.push(Cycle {
                    scope: scope.clone(),
                    members: members.iter().map(|m| (*m).to_owned()).collect(),
                    edges,
                });
            }
        }
        cycles
    }
}

/// Tarjan's algorithm, iterative over a small graph of names.
fn strongly_connected<'a>(adjacency: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<Vec<&'a str>> {
    let mut nodes: BTreeSet<&str> = adjacency.keys().copied().collect();
    nodes.extend(adjacency.values().flatten().copied());
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut low: BTreeMap<&str, usize> = BTreeMap::new();
    let mut on_stack = BTreeSet::new();
    let mut stack = Vec::new();
    let mut out = Vec::new();
    for &root in &nodes {
        if index.contains_key(root) {
            continue;
        }
        // (node, next successor to look at)
        let mut work = vec![(root, 0usize)];
        while let Some(&mut (node, ref mut next)) = work.last_mut() {
            if *next == 0 && !index.contains_key(node) {
                let i = index.len();
                index.insert(node, i);
                low.insert(node, i);
                stack.push(node);
                on_stack.insert(node);
            }
            let succ = adjacency.get(node).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(&s) = succ.get(*next) {
                *next += 1;
                if !index.contains_key(s) {
                    work.push((s, 0));
                } else if on_stack.contains(s) {
                    let l = low[node].min(index[s]);
                    low.insert(node, l);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                let l = low[parent].min(low[node]);
                low.insert(parent, l);
            }
            if low[node] == index[node] {
                let mut component = Vec::new();
                while let Some(n) = stack.pop() {
                    on_stack.remove(n);
                    component.push(n);
                    if n == node {
                        break;
                    }
                }
                out.push(component);
            }
        }
    }
    out
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list `{}`: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot list `{}`: {e}", dir.display()))?;
    paths.sort();
    for p in paths {
        if p.is_dir() {
            collect_files(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// `lib.rs` is the root, `a.rs` and `a/mod.rs` are `a`, `a/b.rs` is `a::b`.
/// (`main.rs` and `bin/` are outside the library and named after the file.)
fn module_of(rel: &Path) -> ModPath {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" && !(parts.is_empty() && stem == "lib") {
            parts.push(stem.to_owned());
        }
    }
    parts
}

/// The module a path names: the longest prefix that is a module, after
/// following what that module imports under the next name.
fn resolve(
    path: &[String],
    modules: &BTreeSet<ModPath>,
    imports: &BTreeMap<ModPath, BTreeMap<String, ModPath>>,
) -> ModPath {
    let mut path = path.to_vec();
    // Re-exports may chain (`crate::X` -> `a::X` -> `a::b::X`); a few
    // steps are plenty and a loop of imports cannot hang the test.
    for _ in 0..8 {
        let mut module: ModPath = Vec::new();
        let mut used = 0;
        for (i, _) in path.iter().enumerate() {
            if modules.contains(&path[..=i].to_vec()) {
                module = path[..=i].to_vec();
                used = i + 1;
            } else {
                break;
            }
        }
        let Some(next) = path.get(used) else {
            return module;
        };
        match imports.get(&module).and_then(|m| m.get(next)) {
            Some(target) => {
                let mut followed = target.clone();
                followed.extend(path[used + 1..].iter().cloned());
                if followed == path {
                    return module;
                }
                path = followed;
            }
            None => return module,
        }
    }
    path
}

/// The edge between siblings that a reference from `from` to `to` makes,
/// as `(scope, from's ancestor, to's ancestor)`, if it crosses siblings.
fn sibling_edge(from: &ModPath, to: &ModPath) -> Option<(ModPath, String, String)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if common == from.len() || common == to.len() {
        return None;
    }
    Some((
        from[..common].to_vec(),
        from[common].clone(),
        to[common].clone(),
    ))
}

struct Ref {
    module: ModPath,
    absolute: Vec<String>,
    line: usize,
}

/// Walks one file: the modules it defines, what they import, and every
/// path that starts at `crate`, `super` or `self`.
struct Collector {
    module: ModPath,
    modules: Vec<ModPath>,
    imports: Vec<((ModPath, String), ModPath)>,
    refs: Vec<Ref>,
}

impl Collector {
    fn new(module: ModPath) -> Collector {
        Collector {
            modules: vec![module.clone()],
            module,
            imports: Vec::new(),
            refs: Vec::new(),
        }
    }

    /// `segments` made absolute from the current module, or `None` for a
    /// path that starts elsewhere (a local name, another crate).
    fn absolute(&self, segments: &[String]) -> Option<Vec<String>> {
        let mut base = self.module.clone();
        let mut rest = segments;
        match rest.first().map(String::as_str) {
            Some("crate") => {
                base.clear();
                rest = &rest[1..];
            }
            Some("self") => rest = &rest[1..],
            Some("super") => {
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
            }
            _ => return None,
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    fn record(&mut self, segments: &[String], line: usize) {
        if let Some(absolute) = self.absolute(segments) {
            self.refs.push(Ref {
                module: self.module.clone(),
                absolute,
                line,
            });
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree, line: usize) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree, line);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let name = n.ident.to_string();
                self.import(prefix, &name, &name, line);
            }
            syn::UseTree::Rename(r) => {
                self.import(prefix, &r.ident.to_string(), &r.rename.to_string(), line);
            }
            syn::UseTree::Glob(_) => self.record(&prefix.clone(), line),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t, line);
                }
            }
        }
    }

    fn import(&mut self, prefix: &[String], name: &str, alias: &str, line: usize) {
        let mut full = prefix.to_vec();
        // `use a::{self}` names `a` itself.
        if name != "self" {
            full.push(name.to_owned());
        }
        let alias = if name == "self" {
            prefix.last().cloned().unwrap_or_default()
        } else {
            alias.to_owned()
        };
        // A `use` path may also start at a child module (`pub use
        // error::Error;` in `lib.rs`): taken as relative, it only matters
        // if it names a module, which an outside crate's name does not.
        let absolute = self.absolute(&full).unwrap_or_else(|| {
            let mut relative = self.module.clone();
            relative.extend(full.iter().cloned());
            relative
        });
        self.imports.push(((self.module.clone(), alias), absolute));
        self.record(&full, line);
    }

    fn tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < trees.len() {
            match &trees[i] {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id) if matches!(id.to_string().as_str(), "crate" | "super") => {
                    let line = id.span().start().line;
                    let mut segments = vec![id.to_string()];
                    let mut j = i + 1;
                    // `::` is two `:` puncts, then an ident.
                    while let (
                        Some(TokenTree::Punct(a)),
                        Some(TokenTree::Punct(b)),
                        Some(TokenTree::Ident(n)),
                    ) = (trees.get(j), trees.get(j + 1), trees.get(j + 2))
                    {
                        if a.as_char() != ':' || b.as_char() != ':' {
                            break;
                        }
                        segments.push(n.to_string());
                        j += 3;
                    }
                    if segments.len() > 1 {
                        self.record(&segments, line);
                    }
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    match item {
        syn::Item::Const(i) => &i.attrs,
        syn::Item::Enum(i) => &i.attrs,
        syn::Item::ExternCrate(i) => &i.attrs,
        syn::Item::Fn(i) => &i.attrs,
        syn::Item::ForeignMod(i) => &i.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Macro(i) => &i.attrs,
        syn::Item::Mod(i) => &i.attrs,
        syn::Item::Static(i) => &i.attrs,
        syn::Item::Struct(i) => &i.attrs,
        syn::Item::Trait(i) => &i.attrs,
        syn::Item::TraitAlias(i) => &i.attrs,
        syn::Item::Type(i) => &i.attrs,
        syn::Item::Union(i) => &i.attrs,
        syn::Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if is_cfg_test(item_attrs(item)) {
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_cfg_test(&f.attrs) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        let Some((_, items)) = &m.content else {
            // `mod x;`: the file is read on its own.
            self.modules.push(
                self.module
                    .iter()
                    .cloned()
                    .chain([m.ident.to_string()])
                    .collect(),
            );
            return;
        };
        self.module.push(m.ident.to_string());
        self.modules.push(self.module.clone());
        for item in items {
            self.visit_item(item);
        }
        self.module.pop();
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let line = u.use_token.span.start().line;
        self.use_tree(&mut Vec::new(), &u.tree, line);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        let line = p
            .segments
            .first()
            .map(|s| s.ident.span().start().line)
            .unwrap_or(0);
        self.record(&segments, line);
        syn::visit::visit_path(self, p);
    }

    fn visit_attribute(&mut self, a: &'ast syn::Attribute) {
        // `#[error("…", crate::error::did_you_mean(..))]` names a module.
        if let syn::Meta::List(l) = &a.meta {
            self.tokens(l.tokens.clone());
        }
        syn::visit::visit_attribute(self, a);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}
