//! Typed options: structs of options, typed keys for reading and
//! defining, and what NixOS options have beyond types (`apply`,
//! `read_only`, `internal`).

use std::collections::BTreeMap;

use bigtop_eval::module::{
    default, force, lazy, types, Config, Error, Key, Module, Opt, OptionValue,
};
use bigtop_eval::Options;

use crate::TestResult;

/// TLS for a site.
#[derive(Options, Debug, Clone, PartialEq)]
struct Tls {
    /// Whether to serve over TLS.
    enable: bool,
    /// The certificate file.
    cert: Option<String>,
}

/// One site.
#[derive(Options, Debug, Clone, PartialEq)]
struct Vhost {
    /// The host name (the entry's key unless given).
    #[option(default_key)]
    name: String,
    /// The directory served.
    #[option(default = "/srv/www")]
    root: String,
    /// Extra headers, in order.
    headers: Vec<String>,
}

/// A web server.
#[derive(Options, Debug, Clone, PartialEq)]
struct Web {
    /// Whether to run the web server.
    enable: bool,
    /// The port it listens on.
    #[option(default = 80, ty = types::port(), example = 8080)]
    port: u16,
    /// The sites, by host name.
    vhosts: BTreeMap<String, Vhost>,
    /// TLS for every site.
    tls: Tls,
    /// The ports the firewall opens for it, sorted and without repeats.
    #[option(apply = |mut v: Vec<u16>| { v.sort(); v.dedup(); v })]
    open_ports: Vec<u16>,
    /// The release this server was first installed with.
    #[option(read_only, default = 1)]
    state_version: u32,
    /// How the web module tells the firewall module what it opens.
    #[option(internal)]
    firewall_note: Option<String>,
    /// The process's name (`type` is a Rust keyword).
    #[option(rename = "type", default = "nginx")]
    kind: String,
}

fn web_module() -> Module {
    Module::new("web", |m| {
        let web = m.options::<Web>("services.web");
        m.when(
            move |c| c.read(web.enable),
            move |m| {
                m.set(web.open_ports, lazy(move |c| Ok(vec![c.read(web.port)?])));
            },
        );
    })
}

#[test]
fn a_struct_of_options_is_declared_defined_and_read_through_typed_keys() -> TestResult {
    let web = Web::at("services.web");
    let host = Module::new("host", move |m| {
        m.import(&web_module());
        m.set(web.enable, true);
        m.set(web.port, default(8080));
        m.set(web.port, 9000);
        m.set(web.vhosts.entry("example.com").headers, vec!["X-A: 1"]);
        m.set(web.vhosts.entry("b.example.org").root, "/srv/b");
        m.set(web.tls.cert, Some("/etc/cert.pem"));
        m.set(web.open_ports, [443, 9000, 443]);
    });
    let cfg = Config::eval(&[host], None)?;
    let w = cfg.read(web)?;
    assert_eq!(w.port, 9000);
    assert!(w.enable);
    // An entry's key fills the field that defaults to it, even when it
    // holds dots (quoted in its path).
    assert_eq!(w.vhosts["b.example.org"].name, "b.example.org");
    assert_eq!(w.vhosts["b.example.org"].root, "/srv/b");
    assert_eq!(w.vhosts["example.com"].root, "/srv/www");
    assert_eq!(w.vhosts["example.com"].headers, vec!["X-A: 1".to_owned()]);
    assert_eq!(
        w.tls,
        Tls {
            enable: false,
            cert: Some("/etc/cert.pem".into())
        }
    );
    // `apply` ran on the merged list: the conditional definition's port
    // and the host's, sorted and deduplicated.
    assert_eq!(w.open_ports, vec![443, 9000]);
    assert_eq!(w.kind, "nginx");
    // One field by its key, and the same by its dotted path.
    assert_eq!(cfg.read(web.vhosts.entry("b.example.org"))?.root, "/srv/b");
    assert_eq!(cfg.get::<u16>("services.web.port")?, 9000);
    assert_eq!(
        cfg.json(r#"services.web.vhosts."b.example.org""#)?,
        serde_json::json!({"name": "b.example.org", "root": "/srv/b", "headers": []})
    );
    assert_eq!(
        web.vhosts.entry("b.example.org").root.path(),
        r#"services.web.vhosts."b.example.org".root"#
    );
    assert_eq!(cfg.get::<String>("services.web.type")?, "nginx");
    Ok(())
}

#[test]
fn typed_definitions_keep_priorities_and_conditions() -> TestResult {
    let web = Web::at("services.web");
    let host = Module::new("host", move |m| {
        m.import(&web_module());
        m.set(web.port, force(8443));
        m.set(web.port, 8080);
        // Off: the web server is not enabled, so its ports stay empty.
    });
    let cfg = Config::eval(&[host], None)?;
    assert_eq!(cfg.read(web.port)?, 8443);
    assert_eq!(cfg.read(web.open_ports)?, Vec::<u16>::new());
    // Where two definitions disagree at one priority, the error names
    // both, as for string paths.
    let clash = Module::new("clash", move |m| {
        m.import(&web_module());
        m.set(web.port, 1);
        m.set(web.port, 2);
    });
    let e = Config::eval(&[clash], None).err().expect("a conflict");
    assert!(e.to_string().contains("conflicting definitions"), "{e}");
    Ok(())
}

#[test]
fn a_read_only_option_refuses_a_second_definition_naming_both() -> TestResult {
    let web = Web::at("services.web");
    let one = Module::new("one", move |m| {
        m.import(&web_module());
        m.set(web.state_version, 3);
    });
    assert_eq!(
        Config::eval(std::slice::from_ref(&one), None)?.read(web.state_version)?,
        3
    );
    let two = Module::new("two", move |m| {
        m.import(&one);
        m.set(web.state_version, force(4));
    });
    let e = Config::eval(&[two], None).err().expect("read-only");
    let Some(Error::ReadOnly { option, defs }) = e.errors.first() else {
        panic!("not a read-only error: {e}");
    };
    assert_eq!(option, "services.web.state_version");
    let mut modules: Vec<&str> = defs.iter().map(|d| &*d.module).collect();
    modules.sort();
    assert_eq!(modules, ["one", "two"]);
    assert!(e.to_string().contains("is read-only"), "{e}");
    Ok(())
}

#[test]
fn read_only_and_apply_work_on_fields_of_a_map_of_structs() -> TestResult {
    #[derive(Options, Debug, Clone, PartialEq)]
    struct Account {
        #[option(read_only, default = 0)]
        uid: u32,
        #[option(apply = |s: String| s.to_lowercase())]
        #[option(default = "")]
        shell: String,
    }
    let accounts: Opt<BTreeMap<String, Account>> = Opt::new("accounts");
    let decl = Module::new("decl", move |m| {
        m.declare(accounts, |o| {
            o.description("Accounts.");
        });
    });
    let ok = Module::new("ok", |m| {
        m.import(&decl);
        m.set(accounts.entry("alice").uid, 1000);
        m.set(accounts.entry("alice").shell, "/BIN/SH");
    });
    let cfg = Config::eval(&[ok], None)?;
    assert_eq!(
        cfg.read(accounts.entry("alice"))?,
        Account {
            uid: 1000,
            shell: "/bin/sh".into()
        }
    );
    assert_eq!(cfg.read(accounts.entry("alice").shell)?, "/bin/sh");
    let twice = Module::new("twice", |m| {
        m.import(&decl);
        m.set(accounts.entry("alice").uid, 1000);
        m.set(accounts.entry("alice").uid, 1001);
    });
    let e = Config::eval(&[twice], None).err().expect("read-only");
    assert!(
        e.errors
            .iter()
            .any(|e| matches!(e, Error::ReadOnly { option, .. } if option == "accounts.alice.uid")),
        "{e}"
    );
    Ok(())
}

#[test]
fn apply_errors_name_the_option() -> TestResult {
    let names: Opt<Vec<String>> = Opt::new("names");
    let m = Module::new("m", move |m| {
        m.option("names", types::list(types::str()), |o| {
            o.default(Vec::<String>::new())
                .apply(|v: Vec<String>| v.len() as i64);
        });
        m.set(names, ["a", "b"]);
    });
    let cfg = Config::eval(&[m], None)?;
    // Its result is what readers see, even of another type.
    assert_eq!(cfg.get::<i64>("names")?, 2);
    let bad = Module::new("bad", |m| {
        m.option("n", types::int(), |o| {
            o.default(1).apply(|v: String| v);
        });
    });
    let e = Config::eval(&[bad], None).err().expect("apply fails");
    assert!(
        e.to_string()
            .contains("`n` was merged, but its `apply` function"),
        "{e}"
    );
    Ok(())
}

#[test]
fn internal_options_are_left_out_of_the_documentation() -> TestResult {
    let cfg = Config::eval(&[web_module()], None)?;
    let md = cfg.options_markdown();
    assert!(md.contains("## `services.web.port`"), "{md}");
    assert!(md.contains("The port it listens on."), "{md}");
    assert!(md.contains("- Example: `8080`"), "{md}");
    assert!(md.contains("## `services.web.vhosts.<name>.root`"), "{md}");
    assert!(!md.contains("firewall_note"), "{md}");
    assert!(!cfg
        .options_json()
        .as_object()
        .unwrap()
        .contains_key("services.web.firewall_note"));
    // Still an option modules can use.
    assert_eq!(
        cfg.get::<Option<String>>("services.web.firewall_note")?,
        None
    );
    Ok(())
}

#[test]
fn rust_types_map_to_option_types() {
    assert_eq!(
        <u16 as OptionValue>::option_type().to_string(),
        "integer from 0 to 65535"
    );
    assert_eq!(
        <Vec<String> as OptionValue>::option_type().to_string(),
        "list of (string)"
    );
    assert_eq!(
        <BTreeMap<String, Option<bool>> as OptionValue>::option_type().to_string(),
        "map of (null or (boolean))"
    );
    assert_eq!(
        <Tls as OptionValue>::option_type().to_string(),
        "submodule (cert, enable)"
    );
    let k = Web::at("a.b");
    assert_eq!(k.tls.cert.path(), "a.b.tls.cert");
    assert_eq!(k.path(), "a.b");
}

#[test]
fn a_value_that_does_not_fit_the_declared_type_is_still_refused_at_evaluation() -> TestResult {
    // The Rust type says u16; the declared type says port, which is the
    // same range. A field whose `ty` narrows it is checked when merged.
    #[derive(Options, Debug)]
    struct Narrow {
        #[option(ty = types::between(1, 10), default = 1)]
        level: u8,
    }
    let n = Narrow::at("narrow");
    let m = Module::new("m", move |m| {
        m.options::<Narrow>("narrow");
        m.set(n.level, 11);
    });
    let e = Config::eval(&[m], None).err().expect("out of range");
    assert!(e.to_string().contains("between 1 and 10"), "{e}");
    Ok(())
}

#[test]
fn a_field_s_apply_holds_for_readers_below_it_and_during_evaluation() -> TestResult {
    #[derive(Options, Debug, Clone, PartialEq)]
    struct Site {
        #[option(apply = |m: BTreeMap<String, String>| m.into_iter().map(|(k, v)| (k, v.to_uppercase())).collect())]
        headers: BTreeMap<String, String>,
        seen: Option<String>,
    }
    let sites: Opt<BTreeMap<String, Site>> = Opt::new("sites");
    let m = Module::new("m", move |m| {
        m.declare(sites, |_| {});
        let a = sites.entry("a");
        m.set(a.headers.entry("X"), "low");
        // Read below the field while the configuration is evaluated.
        m.set(a.seen, lazy(move |c| c.read(a.headers.entry("X"))));
    });
    let cfg = Config::eval(&[m], None)?;
    assert_eq!(cfg.read(sites.entry("a").seen)?, Some("LOW".to_owned()));
    assert_eq!(cfg.read(sites.entry("a").headers.entry("X"))?, "LOW");
    Ok(())
}

#[test]
fn a_custom_type_merges_a_lone_default_in_a_map_entry_too() -> TestResult {
    use bigtop_eval::module::types::CustomType;
    use bigtop_eval::module::Value;
    struct Upper;
    impl CustomType for Upper {
        fn description(&self) -> String {
            "upper-cased string".into()
        }
        fn check(&self, v: &Value) -> Result<(), String> {
            matches!(v, Value::Str(_))
                .then_some(())
                .ok_or_else(|| "not a string".into())
        }
        fn merge(&self, values: Vec<Value>) -> Result<Value, String> {
            match values.into_iter().next() {
                Some(Value::Str(s)) => Ok(Value::from(s.as_str().to_uppercase())),
                _ => Err("no value".into()),
            }
        }
    }
    let m = Module::new("m", |m| {
        m.option(
            "mp",
            types::map(types::submodule(|s| {
                s.option("f", types::custom(Upper), |o| {
                    o.default("abc");
                });
                s.option("g", types::int(), |o| {
                    o.default(1);
                });
            })),
            |_| {},
        );
        m.define("mp.x.g", 2);
    });
    let cfg = Config::eval(&[m], None)?;
    assert_eq!(cfg.get::<String>("mp.x.f")?, "ABC");
    Ok(())
}

/// A user function named like the derive's own locals.
fn o() -> String {
    "from o()".into()
}

#[test]
fn a_field_named_path_and_user_names_like_the_derive_s_locals_compile() -> TestResult {
    #[derive(Options, Debug, Clone, PartialEq)]
    struct File {
        /// Where it goes.
        #[option(default = "/etc/x")]
        path: String,
        #[option(default = o())]
        owner: String,
        /// Internal settings, hidden with all their fields.
        #[option(internal)]
        tls: Tls,
    }
    let f = File::at("file");
    let m = Module::new("m", |m| {
        m.options::<File>("file");
        m.set(f.path, "/etc/y");
    });
    let cfg = Config::eval(&[m], None)?;
    let file = cfg.read(f)?;
    assert_eq!(
        (file.path.as_str(), file.owner.as_str()),
        ("/etc/y", "from o()")
    );
    assert_eq!(f.path.path(), "file.path");
    assert_eq!(Key::path(&f), "file");
    let md = cfg.options_markdown();
    assert!(
        md.contains("## `file.path`") && !md.contains("file.tls"),
        "{md}"
    );
    Ok(())
}

#[test]
fn keys_holding_dots_quotes_and_backslashes_reach_their_entry() -> TestResult {
    let things: Opt<BTreeMap<String, Tls>> = Opt::new("things");
    let odd = ["a\"b", "c.d", "e\\f", "", "g\\\"h.i"];
    let m = Module::new("m", |m| {
        m.declare(things, |_| {});
        for k in odd {
            m.set(things.entry(k).enable, true);
        }
    });
    let cfg = Config::eval(&[m], None)?;
    let all = cfg.read(things)?;
    assert_eq!(all.keys().map(String::as_str).collect::<Vec<_>>(), {
        let mut v = odd.to_vec();
        v.sort();
        v
    });
    for k in odd {
        assert!(cfg.read(things.entry(k).enable)?, "{k:?}");
    }
    // Options declared at a quoted path (a service named with a dot) are
    // reached by their keys.
    let web = Web::at(bigtop_eval::module::join("services", "my.app"));
    let m = Module::new("m", move |m| {
        m.options::<Web>(web.path());
        m.set(web.enable, true);
    });
    let cfg = Config::eval(&[m], None)?;
    assert!(cfg.read(web.enable)?);
    assert!(cfg.read(web)?.enable);
    Ok(())
}
