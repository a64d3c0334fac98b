//! Documentation of every declared option, as Markdown and as JSON.

use std::fmt::Write as _;
use std::sync::Arc;

use super::config::Config;
use super::types::{Kind, Type};
use super::{OptionDecl, ValueOrCode};

/// One documented option: a declared one, or a field of a submodule
/// inside one (`users.<name>.uid`, `hosts.*.port`).
struct Entry<'a> {
    path: String,
    decl: &'a OptionDecl,
    /// The modules declaring it (an option's; a field, declared inside a
    /// type, has only its places).
    modules: &'a [Arc<str>],
    field: bool,
}

fn entries<'a>(
    path: String,
    decl: &'a OptionDecl,
    modules: &'a [Arc<str>],
    out: &mut Vec<Entry<'a>>,
) {
    // Internal options, and what is inside them, are for modules only.
    if decl.internal {
        return;
    }
    out.push(Entry {
        path: path.clone(),
        decl,
        modules,
        field: modules.is_empty(),
    });
    let (inner, step) = inner(&decl.ty, &path);
    if let Some(s) = inner.and_then(Type::submodule) {
        for (name, d) in &s.fields {
            entries(format!("{step}.{name}"), d, &[], out);
        }
    }
}

/// The submodule a type holds (directly or as its elements) and the path
/// its fields are documented under.
fn inner<'t>(t: &'t Type, path: &str) -> (Option<&'t Type>, String) {
    match &*t.0 {
        Kind::Submodule(_) => (Some(t), path.to_owned()),
        Kind::Map(e) => inner(e, &format!("{path}.<name>")),
        Kind::List(e) => inner(e, &format!("{path}.*")),
        Kind::Optional(e) | Kind::Unique(e) => inner(e, path),
        _ => (None, path.to_owned()),
    }
}

fn default_text(d: &OptionDecl) -> Option<String> {
    match (&d.default, &d.default_text) {
        (_, Some(t)) => Some(t.clone()),
        (Some(ValueOrCode::Value(v)), None) => Some(v.to_string()),
        (Some(ValueOrCode::Lazy(_)), None) => Some("(computed)".into()),
        (None, None) => None,
    }
}

impl Config {
    fn doc_entries(&self) -> Vec<Entry<'_>> {
        let mut out = Vec::new();
        for (path, d) in self.options() {
            entries(path.to_owned(), d, &d.modules, &mut out);
        }
        out
    }

    /// Every declared option (and submodule field) as Markdown: a section
    /// per option with its type, default, example, description and the
    /// modules that declare it.
    pub fn options_markdown(&self) -> String {
        let mut o = String::from("# Options\n");
        for e in self.doc_entries() {
            let d = e.decl;
            let _ = write!(o, "\n## `{}`\n\n", e.path);
            if !d.description.is_empty() {
                let _ = write!(o, "{}\n\n", d.description.trim_end());
            }
            let _ = writeln!(o, "- Type: {}", d.ty);
            if let Some(t) = default_text(d) {
                let _ = writeln!(o, "- Default: `{t}`");
            }
            if let Some(x) = &d.example {
                let _ = writeln!(o, "- Example: `{x}`");
            }
            if e.field {
                let at: Vec<String> = d.locs.iter().map(|l| l.to_string()).collect();
                let _ = writeln!(o, "- Declared at: {}", at.join(", "));
            } else {
                let declared: Vec<String> = e
                    .modules
                    .iter()
                    .zip(&d.locs)
                    .map(|(m, l)| format!("`{m}` ({l})"))
                    .collect();
                let _ = writeln!(o, "- Declared by: {}", declared.join(", "));
            }
        }
        o
    }

    /// Every declared option (and submodule field) as JSON: a map from
    /// path to `type`, `default`, `example`, `description`, `declarations`.
    pub fn options_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for e in self.doc_entries() {
            let d = e.decl;
            let declarations: Vec<serde_json::Value> = if e.field {
                d.locs
                    .iter()
                    .map(|l| serde_json::json!({ "location": l.to_string() }))
                    .collect()
            } else {
                e.modules
                    .iter()
                    .zip(&d.locs)
                    .map(|(m, l)| serde_json::json!({ "module": &**m, "location": l.to_string() }))
                    .collect()
            };
            out.insert(
                e.path,
                serde_json::json!({
                    "type": d.ty.to_string(),
                    "default": default_text(d),
                    "example": d.example.as_ref().map(|x| x.to_json()),
                    "description": d.description,
                    "declarations": declarations,
                }),
            );
        }
        serde_json::Value::Object(out)
    }
}
