//! Definitions from data: TOML or JSON documents keyed by option path.
//!
//! This is how per-machine parameters kept by an inventory reach the
//! configuration: each value of the document defines the option its key
//! names, at [`PLATFORM`](super::PLATFORM) priority unless told
//! otherwise, remembering the file and key so that a type error or a
//! conflict names them.

use std::path::Path;
use std::sync::Arc;

use super::error::{Error, Loc};
use super::value::Value;
use super::{priority, Module, ModuleBuilder, PLATFORM};

/// A data document's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// TOML.
    Toml,
    /// JSON.
    Json,
}

impl Module {
    /// A module named `file` defining, at `prio`, every value of the
    /// document `text` on the option path its keys form:
    /// `[services.web] port = 8080` defines `services.web.port`.
    ///
    /// ```
    /// use bigtop_eval::module::{types, Config, Format, Module, PLATFORM};
    /// let web = Module::new("web", |m| {
    ///     m.option("services.web.port", types::port(), |o| { o.default(80); });
    /// });
    /// let data = Module::data("hosts/web1.toml", Format::Toml, "[services.web]\nport = 8080\n", PLATFORM)?;
    /// let cfg = Config::eval(&[web, data], None)?;
    /// assert_eq!(cfg.get::<u16>("services.web.port")?, 8080);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn data(file: &str, format: Format, text: &str, prio: u32) -> Result<Module, Error> {
        let bad = |reason: String| Error::Data {
            file: file.to_owned(),
            reason,
        };
        let root = match format {
            Format::Toml => {
                let t: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
                Value::from_toml(&toml::Value::Table(t)).map_err(bad)?
            }
            Format::Json => {
                let j: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
                Value::from_json(&j).map_err(bad)?
            }
        };
        let Value::Map(top) = root else {
            return Err(bad("the document is not a table of option paths".into()));
        };
        let file: Arc<str> = Arc::from(file);
        let mut defs = Vec::new();
        leaves(&mut Vec::new(), Value::Map(top), &mut defs);
        Ok(Module::new(file.to_string(), |m: &mut ModuleBuilder| {
            for (path, v) in defs {
                let loc = Loc::data(file.clone(), path.join("."));
                m.push_def(path, priority(prio, v).into(), loc);
            }
        }))
    }

    /// [`Module::data`] of a file, at [`PLATFORM`] priority: TOML or JSON
    /// by its extension (`.toml`, `.json`).
    pub fn data_file(path: &Path) -> Result<Module, Error> {
        let name = path.display().to_string();
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Format::Toml,
            Some("json") => Format::Json,
            _ => {
                return Err(Error::Data {
                    file: name,
                    reason: "the file name ends in neither `.toml` nor `.json`".into(),
                })
            }
        };
        let text = std::fs::read_to_string(path).map_err(|e| Error::Data {
            file: name.clone(),
            reason: e.to_string(),
        })?;
        Module::data(&name, format, &text, PLATFORM)
    }
}

/// Every non-table value with its key path; an empty table is a value
/// (an empty map) too.
fn leaves(at: &mut Vec<String>, v: Value, out: &mut Vec<(Vec<String>, Value)>) {
    match v {
        Value::Map(m) if !m.is_empty() => {
            for (k, v) in m {
                at.push(k);
                leaves(at, v, out);
                at.pop();
            }
        }
        v => out.push((at.clone(), v)),
    }
}
