//! The module system: priorities, types and merging, laziness and cycles,
//! imports, migrations, assertions, data documents, docs, queries.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bigtop_eval::module::{
    after, before, default, force, lazy, platform, priority, types, Config, Error, Errors, Format,
    Json, Loc, Module, Opt, Value, PLATFORM,
};

use crate::TestResult;

fn web() -> Module {
    Module::new("web", |m| {
        m.option("services.web.enable", types::bool(), |o| {
            o.default(false)
                .description("Whether to run the web server.");
        });
        m.option("services.web.port", types::port(), |o| {
            o.default(80)
                .description("The port it listens on.")
                .example(8080);
        });
        m.option("services.web.name", types::single_line_str(), |o| {
            o.default("web");
        });
        m.option("firewall.ports", types::list(types::port()), |o| {
            o.default(Vec::<u16>::new())
                .description("TCP ports open to the world.");
        });
        m.when(
            |c| c.get::<bool>("services.web.enable"),
            |m| {
                m.define(
                    "firewall.ports",
                    lazy(|c| Ok(vec![c.get::<u16>("services.web.port")?])),
                );
            },
        );
    })
}

fn eval(ms: &[Module]) -> Result<Config, Errors> {
    Config::eval(ms, None)
}

fn errors(ms: &[Module]) -> Vec<Error> {
    match eval(ms) {
        Ok(_) => panic!("the configuration evaluated, but errors were expected"),
        Err(e) => e.errors,
    }
}

fn line_of(loc: &Loc) -> u32 {
    match loc {
        Loc::Code(l) => l.line(),
        other => panic!("expected a code location, got {other}"),
    }
}

#[test]
fn priorities_order_default_platform_normal_force() -> TestResult {
    let port = |m: Module| -> Result<u16, Box<dyn std::error::Error>> {
        Ok(eval(&[web(), m])?.get::<u16>("services.web.port")?)
    };
    // The option's own default.
    assert_eq!(port(Module::new("none", |_| {}))?, 80);
    // default() beats the option default; platform beats default().
    assert_eq!(
        port(Module::new("d", |m| {
            m.define("services.web.port", default(81));
        }))?,
        81
    );
    assert_eq!(
        port(Module::new("p", |m| {
            m.define("services.web.port", default(81));
            m.define("services.web.port", platform(82));
        }))?,
        82
    );
    // The owner's plain definition beats the platform's; force beats it.
    assert_eq!(
        port(Module::new("n", |m| {
            m.define("services.web.port", platform(82));
            m.define("services.web.port", 83);
        }))?,
        83
    );
    assert_eq!(
        port(Module::new("f", |m| {
            m.define("services.web.port", 83);
            m.define("services.web.port", force(84));
            m.define("services.web.port", priority(60, 85));
        }))?,
        84
    );
    // Equal definitions at the winning priority agree.
    assert_eq!(
        port(Module::new("same", |m| {
            m.define("services.web.port", 86);
            m.define("services.web.port", 86);
        }))?,
        86
    );
    Ok(())
}

#[test]
fn a_conflict_lists_every_definition_with_its_place_and_says_how_to_resolve_it() {
    let a = Module::new("a", |m| {
        m.define("services.web.port", 8080);
    });
    let b = Module::new("b", |m| {
        m.define("services.web.port", 9090);
    });
    let errs = errors(&[web(), a, b]);
    let [Error::Conflict {
        option,
        priority,
        defs,
    }] = &errs[..]
    else {
        panic!("expected one conflict, got {errs:?}");
    };
    assert_eq!((option.as_str(), *priority), ("services.web.port", 100));
    let shown: Vec<(&str, Option<&Value>)> = defs
        .iter()
        .map(|d| (&*d.module, d.value.as_ref()))
        .collect();
    assert_eq!(
        shown,
        vec![
            ("a", Some(&Value::Int(8080))),
            ("b", Some(&Value::Int(9090)))
        ]
    );
    let text = errs[0].to_string();
    assert!(text.contains("modules.rs:"), "{text}");
    assert!(text.contains("force("), "{text}");
}

#[test]
fn values_are_checked_against_their_type_and_errors_name_the_definition() {
    let line = line!() + 2;
    let bad = Module::new("bad", |m| {
        m.define("services.web.port", 70000);
    });
    let errs = errors(&[web(), bad]);
    let [Error::Type {
        option,
        expected,
        value,
        module,
        loc,
        ..
    }] = &errs[..]
    else {
        panic!("expected one type error, got {errs:?}");
    };
    assert_eq!(option, "services.web.port");
    assert_eq!(expected, "a port (0 to 65535)");
    assert_eq!(**value, Value::Int(70000));
    assert_eq!(&**module, "bad");
    assert_eq!(line_of(loc), line);

    let cases: Vec<(types::Type, Value, &str)> = vec![
        (types::bool(), Value::Int(1), "it is an integer"),
        (types::single_line_str(), "a\nb".into(), "line break"),
        (types::non_empty_str(), "".into(), "empty"),
        (
            types::matching("^[a-z]+$").expect("a pattern"),
            "Web1".into(),
            "does not match",
        ),
        (
            types::one_of_str(["debug", "info"]),
            "inf".into(),
            "did you mean `info`",
        ),
        (types::path(), "etc/x".into(), "not an absolute path"),
        (types::between(1, 9), Value::Int(10), "between 1 and 9"),
        (types::list(types::int()), Value::Int(1), "it is an integer"),
    ];
    for (ty, v, why) in cases {
        let desc = ty.to_string();
        let m = Module::new("m", move |m| {
            m.option("x", ty.clone(), |_| {});
            m.define("x", v.clone());
        });
        let errs = errors(&[m]);
        assert!(
            matches!(&errs[..], [Error::Type { reason, .. }] if reason.contains(why)),
            "{desc}: {errs:?}"
        );
    }
}

#[test]
fn lists_concatenate_in_order_maps_merge_by_key_strings_join() -> TestResult {
    let decl = Module::new("decl", |m| {
        m.option("l", types::list(types::str()), |_| {});
        m.option("m", types::map(types::int()), |_| {});
        m.option("s", types::lines(), |_| {});
        m.option("o", types::optional(types::int()), |o| {
            o.default(Value::Null);
        });
        m.option("e", types::either([types::int(), types::str()]), |_| {});
    });
    let a = Module::new("a", |m| {
        m.define("l", vec!["a1"]);
        m.define("l", after(vec!["last"]));
        m.define("m", BTreeMap::from([("x", 1), ("y", 2)]));
        m.define("s", "second");
        m.define("e", "text");
    });
    let b = Module::new("b", |m| {
        m.define("l", vec!["b1", "b2"]);
        m.define("l", before(vec!["first"]));
        m.define("m.z", 3);
        m.define("m.y", force(20));
        m.define("s", before("first"));
    });
    let cfg = eval(&[decl, a, b])?;
    assert_eq!(
        cfg.get::<Vec<String>>("l")?,
        ["first", "a1", "b1", "b2", "last"]
    );
    assert_eq!(
        cfg.get::<BTreeMap<String, i64>>("m")?,
        BTreeMap::from([("x".into(), 1), ("y".into(), 20), ("z".into(), 3)])
    );
    assert_eq!(cfg.get::<String>("s")?, "first\nsecond");
    assert_eq!(cfg.get::<Option<i64>>("o")?, None);
    assert_eq!(cfg.get::<String>("e")?, "text");
    // One key of a map option, read by path.
    assert_eq!(cfg.get::<i64>("m.z")?, 3);
    Ok(())
}

#[test]
fn optional_unique_and_custom_types_merge_by_their_rules() -> TestResult {
    struct Max;
    impl types::CustomType for Max {
        fn description(&self) -> String {
            "largest integer".into()
        }
        fn check(&self, v: &Value) -> Result<(), String> {
            match v {
                Value::Int(_) => Ok(()),
                other => Err(format!("it is {}", other.kind())),
            }
        }
        fn merge(&self, values: Vec<Value>) -> Result<Value, String> {
            values
                .into_iter()
                .max_by_key(|v| match v {
                    Value::Int(i) => *i,
                    _ => i64::MIN,
                })
                .ok_or_else(|| "no values".into())
        }
    }
    let decl = Module::new("decl", |m| {
        m.option("max", types::custom(Max), |_| {});
        m.option("once", types::unique(types::str()), |_| {});
        m.option("opt", types::optional(types::int()), |_| {});
    });
    let ok = Module::new("ok", |m| {
        m.define("max", 3);
        m.define("max", 7);
        m.define("once", "here");
        m.define("opt", 4);
    });
    let cfg = eval(&[decl.clone(), ok])?;
    assert_eq!(cfg.get::<i64>("max")?, 7);
    assert_eq!(cfg.get::<Option<i64>>("opt")?, Some(4));

    let twice = Module::new("twice", |m| {
        m.define("max", 1);
        m.define("once", "a");
        m.define("once", "a");
        m.define("opt", Value::Null);
        m.define("opt", 4);
    });
    let errs = errors(&[decl, twice]);
    assert!(
        errs.iter()
            .any(|e| matches!(e, Error::NotUnique { option, defs } if option == "once" && defs.len() == 2)),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| matches!(e, Error::Conflict { option, .. } if option == "opt")),
        "{errs:?}"
    );
    Ok(())
}

fn users() -> Module {
    Module::new("users", |m| {
        m.option(
            "users",
            types::map(types::submodule(|s| {
                s.option("uid", types::unsigned(), |_| {});
                s.option("shell", types::path(), |o| {
                    o.default("/bin/sh");
                });
                s.option("groups", types::list(types::str()), |o| {
                    o.default(Vec::<String>::new());
                });
            })),
            |o| {
                o.default(BTreeMap::<String, Value>::new())
                    .description("Accounts.");
            },
        );
    })
}

#[test]
fn submodules_in_maps_take_field_defaults_and_per_field_priorities() -> TestResult {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct User {
        uid: u32,
        shell: String,
        groups: Vec<String>,
    }
    let a = Module::new("a", |m| {
        m.define("users.alice.uid", 1000);
        m.define("users.alice.shell", default("/bin/bash"));
        m.define("users.alice.groups", vec!["wheel"]);
    });
    let b = Module::new("b", |m| {
        m.define("users.alice.shell", "/bin/zsh");
        m.define("users.alice.groups", vec!["audio"]);
        m.define("users.bob", BTreeMap::from([("uid", Value::Int(1001))]));
    });
    let cfg = eval(&[users(), a, b])?;
    let Json(alice) = cfg.get::<Json<User>>("users.alice")?;
    assert_eq!(
        alice,
        User {
            uid: 1000,
            shell: "/bin/zsh".into(),
            groups: vec!["wheel".into(), "audio".into()],
        }
    );
    assert_eq!(cfg.get::<String>("users.bob.shell")?, "/bin/sh");

    // A field nobody declared, with the fields that are.
    let typo = Module::new("typo", |m| {
        m.define("users.carol.uidd", 5);
    });
    let errs = errors(&[users(), typo]);
    assert!(
        matches!(&errs[..], [Error::Unknown { path, suggestions, .. }]
            if path == "users.carol.uidd" && suggestions == &["users.carol.uid".to_owned()]),
        "{errs:?}"
    );
    // A field with no default and no definition.
    let no_uid = Module::new("no_uid", |m| {
        m.define("users.dave.shell", "/bin/sh");
    });
    let errs = errors(&[users(), no_uid]);
    assert!(
        matches!(&errs[..], [Error::NoValue { option, .. }] if option == "users.dave.uid"),
        "{errs:?}"
    );
    Ok(())
}

#[test]
fn declarations_merge_submodules_gain_fields_enums_gain_values() -> TestResult {
    let base = Module::new("base", |m| {
        m.option(
            "hosts",
            types::map(types::submodule(|s| {
                s.option("port", types::port(), |o| {
                    o.default(80);
                });
            })),
            |o| {
                o.default(BTreeMap::<String, Value>::new());
            },
        );
        m.option("log.level", types::one_of_str(["info", "debug"]), |o| {
            o.default("info");
        });
    });
    let ext = Module::new("ext", |m| {
        m.option(
            "hosts",
            types::map(types::submodule(|s| {
                s.option("tls", types::bool(), |o| {
                    o.default(false);
                });
            })),
            |_| {},
        );
        m.option("log.level", types::one_of_str(["trace"]), |_| {});
        m.define("hosts.a.tls", true);
        m.define("log.level", "trace");
    });
    let cfg = eval(&[base.clone(), ext])?;
    assert_eq!(cfg.get::<u16>("hosts.a.port")?, 80);
    assert!(cfg.get::<bool>("hosts.a.tls")?);
    assert_eq!(cfg.get::<String>("log.level")?, "trace");

    let clash = Module::new("clash", |m| {
        m.option("log.level", types::str(), |_| {});
    });
    let errs = errors(&[base, clash]);
    assert!(
        matches!(&errs[..], [Error::Declaration { option, reason, .. }]
            if option == "log.level" && reason.contains("only submodules, enums")),
        "{errs:?}"
    );
    Ok(())
}

#[test]
fn options_are_merged_once_conditions_are_lazy_and_cycles_show_their_chain() -> TestResult {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let m = Module::new("lazy", move |m| {
        m.option("a", types::int(), |_| {});
        m.option("b", types::int(), |_| {});
        m.option("c", types::int(), |_| {});
        let counted = counted.clone();
        m.define(
            "a",
            lazy(move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(1)
            }),
        );
        m.define("b", lazy(|c| Ok(c.get::<i64>("a")? + 1)));
        m.define("c", lazy(|c| Ok(c.get::<i64>("a")? + c.get::<i64>("b")?)));
    });
    let cfg = eval(&[web(), m])?;
    assert_eq!(cfg.get::<i64>("c")?, 3);
    assert_eq!(cfg.get::<i64>("c")?, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "`a` is merged once");
    // The web module's `when` reads an option of the same module.
    assert_eq!(cfg.get::<Vec<u16>>("firewall.ports")?, Vec::<u16>::new());

    let cyclic = Module::new("cyclic", |m| {
        m.option("x", types::int(), |_| {});
        m.option("y", types::int(), |_| {});
        m.define("x", lazy(|c| c.get::<i64>("y")));
        m.define("y", lazy(|c| c.get::<i64>("x")));
    });
    let errs = errors(&[cyclic]);
    assert_eq!(
        errs,
        vec![Error::Cycle {
            chain: vec!["x".into(), "y".into(), "x".into()]
        }]
    );
    Ok(())
}

#[test]
fn imports_are_deduplicated_and_disabled_modules_are_left_out() -> TestResult {
    let common = Module::new("common", |m| {
        m.option("tags", types::list(types::str()), |_| {});
        m.define("tags", vec!["common"]);
    });
    let extra = Module::new("extra", |m| {
        m.define("tags", vec!["extra"]);
    });
    let a = Module::new("a", |m| {
        m.import(&common);
        m.import(&extra);
    });
    let b = Module::new("b", |m| {
        m.import(&common);
    });
    let cfg = eval(&[a.clone(), b.clone()])?;
    assert_eq!(cfg.get::<Vec<String>>("tags")?, ["common", "extra"]);
    let names: Vec<&str> = cfg.modules().iter().map(Module::name).collect();
    assert_eq!(names, ["a", "common", "extra", "b"]);

    let without = Module::new("without", |m| {
        m.disable("extra");
    });
    let cfg = eval(&[a, b, without])?;
    assert_eq!(cfg.get::<Vec<String>>("tags")?, ["common"]);
    Ok(())
}

#[test]
fn renamed_options_forward_with_a_warning_and_removed_ones_fail_with_instructions() -> TestResult {
    let m = Module::new("migrations", |m| {
        m.renamed("services.web.listen_port", "services.web.port");
        m.removed(
            "services.web.ssl",
            "TLS is configured per virtual host now: set `tls = true` on each.",
        );
    });
    let old = Module::new("old", |m| {
        m.define("services.web.listen_port", force(8443));
        m.define("services.web.port", 8080);
    });
    let cfg = eval(&[web(), m.clone(), old])?;
    // Forwarded with its priority: force wins over the plain definition.
    assert_eq!(cfg.get::<u16>("services.web.port")?, 8443);
    let w = cfg.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].message.contains("`services.web.port`") && &*w[0].module == "old",
        "{w:?}"
    );

    let removed = Module::new("removed", |m| {
        m.define("services.web.ssl", true);
    });
    let errs = errors(&[web(), m, removed]);
    assert!(
        matches!(&errs[..], [Error::Removed { option, instructions, .. }]
            if option == "services.web.ssl" && instructions.contains("per virtual host")),
        "{errs:?}"
    );
    Ok(())
}

#[test]
fn every_error_assertion_and_warning_is_reported_at_once() {
    let checks = Module::new("checks", |m| {
        m.assert(
            |c| Ok(c.get::<u16>("services.web.port")? != 0),
            "the web server needs a port",
        );
        m.warn(
            |c| Ok(c.get::<u16>("services.web.port")? < 1024),
            "a port below 1024 needs privileges",
        );
    });
    let other = Module::new("other", |m| {
        m.assert(|_| Ok(false), "this machine has no disk");
        m.define("services.web.prot", 1);
        m.define("services.web.name", "two\nlines");
        m.define("services.web.port", 0);
    });
    let e = eval(&[web(), checks, other]).err().expect("errors");
    let kinds: Vec<String> = e
        .errors
        .iter()
        .map(|e| match e {
            Error::Unknown { suggestions, .. } => format!("unknown {suggestions:?}"),
            Error::Type { option, .. } => format!("type {option}"),
            Error::Assertion {
                module, message, ..
            } => format!("assertion {module}: {message}"),
            other => format!("other {other}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            r#"unknown ["services.web.port"]"#,
            "type services.web.name",
            "assertion checks: the web server needs a port",
            "assertion other: this machine has no disk",
        ]
    );
    assert_eq!(e.warnings.len(), 1);
    assert_eq!(&*e.warnings[0].module, "checks");
    let text = e.to_string();
    assert!(text.starts_with("4 errors:"), "{text}");
    assert!(text.contains("warning: a port below 1024"), "{text}");
}

#[test]
fn unknown_options_suggest_the_closest_and_unset_ones_say_where_they_are_declared() {
    let m = Module::new("typo", |m| {
        m.define("services.web.enabel", true);
    });
    let errs = errors(&[web(), m]);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0]
            .to_string()
            .contains("did you mean `services.web.enable`?"),
        "{}",
        errs[0]
    );
    // Unset and unused is fine: an option needs a value where it is read.
    let unused = Module::new("unused", |m| {
        m.option("db.password_file", types::path(), |_| {});
    });
    assert!(eval(&[unused]).is_ok());
    let m = Module::new("needs", |m| {
        m.option("db.password_file", types::path(), |_| {});
        m.option("db.url", types::str(), |_| {});
        m.define(
            "db.url",
            lazy(|c| Ok(format!("file:{}", c.get::<String>("db.password_file")?))),
        );
    });
    let errs = errors(&[m]);
    assert!(
        matches!(&errs[..], [Error::NoValue { option, declared: Loc::Code(l) }]
            if option == "db.password_file" && l.file().ends_with("modules.rs")),
        "{errs:?}"
    );
}

#[test]
fn data_documents_define_at_platform_priority_and_errors_name_file_and_key() -> TestResult {
    let data = Module::data(
        "inventory/web1.toml",
        Format::Toml,
        r#"
[services.web]
port = 8080
name = "web1"

[users."deploy.bot"]
uid = 2000
"#,
        PLATFORM,
    )?;
    let owner = Module::new("owner", |m| {
        m.define("services.web.name", "customer-web");
        m.define("services.web.port", default(9999));
    });
    let cfg = eval(&[web(), users(), data.clone(), owner])?;
    // Above defaults, below the owner's own definitions.
    assert_eq!(cfg.get::<u16>("services.web.port")?, 8080);
    assert_eq!(cfg.get::<String>("services.web.name")?, "customer-web");
    // A key with a dot stays one key.
    let users: BTreeMap<String, Value> = cfg.get("users")?;
    assert_eq!(users.keys().collect::<Vec<_>>(), ["deploy.bot"]);

    let json = Module::data(
        "inventory/web2.json",
        Format::Json,
        r#"{"services": {"web": {"port": "eighty"}}}"#,
        PLATFORM,
    )?;
    let errs = errors(&[web(), json]);
    let [Error::Type { loc, option, .. }] = &errs[..] else {
        panic!("expected one type error, got {errs:?}");
    };
    assert_eq!(option, "services.web.port");
    assert_eq!(
        loc.to_string(),
        "inventory/web2.json, key `services.web.port`"
    );

    let unknown = Module::data(
        "inventory/web3.toml",
        Format::Toml,
        "services.web.prt = 1\n",
        PLATFORM,
    )?;
    let errs = errors(&[web(), unknown]);
    assert!(
        errs[0]
            .to_string()
            .contains("inventory/web3.toml, key `services.web.prt`"),
        "{}",
        errs[0]
    );

    for (text, why) in [("port = ", "inventory/bad.toml"), ("ratio = 0.5", "float")] {
        let e = Module::data("inventory/bad.toml", Format::Toml, text, PLATFORM)
            .expect_err("a bad document is refused");
        assert!(e.to_string().contains(why), "{e}");
    }
    Ok(())
}

#[test]
fn a_data_file_is_read_by_its_extension() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("web.json");
    std::fs::write(&path, r#"{"services": {"web": {"enable": true}}}"#)?;
    let cfg = eval(&[web(), Module::data_file(&path)?])?;
    assert_eq!(cfg.get::<Vec<u16>>("firewall.ports")?, vec![80]);
    let e = Module::data_file(&dir.path().join("web.yaml"))
        .expect_err("an unknown extension is refused");
    assert!(e.to_string().contains("web.yaml"), "{e}");
    Ok(())
}

#[test]
fn who_defined_an_option_with_which_value_at_which_priority() -> TestResult {
    let a = Module::new("a", |m| {
        m.define("services.web.port", platform(8080));
        m.define("services.web.port", 9000);
    });
    let b = Module::new("b", |m| {
        m.when(
            |_| Ok(false),
            |m| {
                m.define("services.web.port", force(1));
            },
        );
    });
    let cfg = eval(&[web(), a, b])?;
    let defs = cfg.definitions("services.web.port")?;
    let seen: Vec<(&str, u32, Option<&Value>, bool, bool)> = defs
        .iter()
        .map(|d| {
            (
                &*d.shown.module,
                d.shown.priority,
                d.shown.value.as_ref(),
                d.active,
                d.wins,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("a", 900, Some(&Value::Int(8080)), true, false),
            ("a", 100, Some(&Value::Int(9000)), true, true),
            ("b", 50, Some(&Value::Int(1)), false, false),
            ("web", 1500, Some(&Value::Int(80)), true, false),
        ]
    );
    Ok(())
}

#[test]
fn typed_keys_and_conversions() -> TestResult {
    const PORT: Opt<u16> = Opt::new("services.web.port");
    const NAME: Opt<String> = Opt::new("services.web.name");
    let cfg = eval(&[web()])?;
    assert_eq!(cfg.read(PORT)?, 80);
    assert_eq!(cfg.read(NAME)?, "web");
    let e = cfg
        .get::<bool>("services.web.port")
        .expect_err("not a bool");
    assert!(matches!(e, Error::Convert { ref option, .. } if option == "services.web.port"));
    // A group of options reads as a map, and as a struct.
    #[derive(serde::Deserialize)]
    struct Web {
        enable: bool,
        port: u16,
    }
    let Json(w) = cfg.get::<Json<Web>>("services.web")?;
    assert_eq!((w.enable, w.port), (false, 80));
    let e = cfg.get::<u16>("services.webb.port").expect_err("unknown");
    assert!(e.to_string().contains("does not exist"), "{e}");
    Ok(())
}

#[test]
fn options_are_documented_as_markdown_and_json() -> TestResult {
    let cfg = eval(&[web(), users()])?;
    let md = cfg.options_markdown();
    let md = md
        .lines()
        // Line and column numbers move with every edit of this file.
        .map(|l| match l.find("modules.rs:") {
            Some(i) => {
                let rest = l[i + "modules.rs".len()..]
                    .trim_start_matches(|c: char| c == ':' || c.is_ascii_digit());
                format!("{}modules.rs{rest}", &l[..i])
            }
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    insta::assert_snapshot!(md, @r#"
    # Options

    ## `firewall.ports`

    TCP ports open to the world.

    - Type: list of (port (0 to 65535))
    - Default: `[]`
    - Declared by: `web` (crates/eval/tests/eval/modules.rs)

    ## `services.web.enable`

    Whether to run the web server.

    - Type: boolean
    - Default: `false`
    - Declared by: `web` (crates/eval/tests/eval/modules.rs)

    ## `services.web.name`

    - Type: single-line string
    - Default: `"web"`
    - Declared by: `web` (crates/eval/tests/eval/modules.rs)

    ## `services.web.port`

    The port it listens on.

    - Type: port (0 to 65535)
    - Default: `80`
    - Example: `8080`
    - Declared by: `web` (crates/eval/tests/eval/modules.rs)

    ## `users`

    Accounts.

    - Type: map of (submodule (groups, shell, uid))
    - Default: `{}`
    - Declared by: `users` (crates/eval/tests/eval/modules.rs)

    ## `users.<name>.groups`

    - Type: list of (string)
    - Default: `[]`
    - Declared at: crates/eval/tests/eval/modules.rs

    ## `users.<name>.shell`

    - Type: absolute path
    - Default: `"/bin/sh"`
    - Declared at: crates/eval/tests/eval/modules.rs

    ## `users.<name>.uid`

    - Type: unsigned integer
    - Declared at: crates/eval/tests/eval/modules.rs
    "#);
    let json = cfg.options_json();
    assert_eq!(json["services.web.port"]["type"], "port (0 to 65535)");
    assert_eq!(json["services.web.port"]["default"], "80");
    assert_eq!(json["services.web.port"]["example"], 8080);
    assert_eq!(json["users.<name>.shell"]["default"], "\"/bin/sh\"");
    assert_eq!(
        json["services.web.enable"]["declarations"][0]["module"],
        "web"
    );
    Ok(())
}

#[test]
fn a_definition_cannot_reach_into_a_scalar_or_give_a_group_a_non_map() {
    let m = Module::new("m", |m| {
        m.define("services.web.port.number", 1);
        m.define("services.web", 5);
    });
    let errs = errors(&[web(), m]);
    let found: Vec<(&str, &str)> = errs
        .iter()
        .map(|e| match e {
            Error::BadDefinition { path, reason, .. } => (path.as_str(), reason.as_str()),
            other => panic!("expected bad definitions, got {other}"),
        })
        .collect();
    assert_eq!(
        found,
        [
            (
                "services.web",
                "gives an integer to a group of options; give a map of them, or define each option"
            ),
            (
                "services.web.port.number",
                "reaches into `services.web.port`, which is port (0 to 65535) and has no options inside"
            ),
        ]
    );
}

#[test]
fn lists_of_submodules_fill_each_element_and_outputs_keep_their_package() -> TestResult {
    use bigtop_eval::drv::{DrvBuilder, Output, Platform};
    let lib = DrvBuilder::new("lib")
        .builder("/bin/sh")
        .outputs(["out", "dev"])
        .build(&Platform::default())?;
    let dev = lib.output("dev")?;
    let (l2, d2) = (lib.clone(), dev.clone());
    let m = Module::new("m", move |m| {
        m.option(
            "listeners",
            types::list(types::submodule(|s| {
                s.option("port", types::port(), |_| {});
                s.option("tls", types::bool(), |o| {
                    o.default(false);
                });
            })),
            |_| {},
        );
        m.option("headers", types::output(), |_| {});
        m.option("lib", types::package(), |_| {});
        m.option("include", types::path(), |_| {});
        m.define(
            "listeners",
            vec![
                BTreeMap::from([("port", Value::Int(80))]),
                BTreeMap::from([("port", Value::Int(443)), ("tls", Value::Bool(true))]),
            ],
        );
        m.define("headers", d2.clone());
        m.define("lib", l2.clone());
        m.define("include", d2.clone());
    });
    let cfg = eval(&[m])?;
    assert!(!cfg.get::<bool>("listeners.0.tls")?);
    assert_eq!(cfg.get::<u16>("listeners.1.port")?, 443);
    assert_eq!(cfg.get::<Output>("headers")?, dev);
    assert_eq!(cfg.get::<Output>("lib")?, lib.out());
    let include: bigtop_eval::drv::Str = cfg.get("include")?;
    assert!(include.as_str().ends_with("-lib-dev"), "{include:?}");
    assert_eq!(
        include.context(),
        bigtop_eval::drv::Str::from(&dev).context()
    );

    let bad = Module::new("bad", |m| {
        m.option(
            "listeners",
            types::list(types::submodule(|s| {
                s.option("port", types::port(), |_| {});
            })),
            |_| {},
        );
        m.define(
            "listeners",
            vec![BTreeMap::from([("prot", Value::Int(80))])],
        );
    });
    let errs = errors(&[bad]);
    assert!(
        matches!(&errs[..], [Error::Unknown { path, .. }] if path == "listeners.0.prot"),
        "{errs:?}"
    );
    Ok(())
}

/// Regression: a losing definition's code must not run — a default that
/// needs a package set, fails, or reads an option that reads this one.
#[test]
fn a_definition_that_loses_is_never_computed() -> TestResult {
    let m = Module::new("m", |m| {
        m.option("pkg", types::str(), |o| {
            o.default_with("the release's `tool`", |c| {
                Ok(c.pkgs()?.get("tool")?.name().to_owned())
            });
        });
        m.option("a", types::int(), |o| {
            o.default_with("twice `b`", |c| Ok(c.get::<i64>("b")? * 2));
        });
        m.option("b", types::int(), |_| {});
        m.option("c", types::int(), |_| {});
        m.define("pkg", "/mine");
        m.define("a", 5);
        m.define("b", lazy(|c| Ok(c.get::<i64>("a")? + 1)));
        m.define(
            "c",
            default(lazy(|_| -> Result<i64, Error> { Err(Error::msg("boom")) })),
        );
        m.define("c", 7);
        m.define(
            "users.bob.shell",
            default(lazy(|_| -> Result<String, Error> {
                Err(Error::msg("shell"))
            })),
        );
        m.define("users.bob.shell", "/bin/zsh");
        m.define("users.bob.uid", 3);
    });
    let cfg = eval(&[users(), m])?;
    assert_eq!(cfg.get::<String>("pkg")?, "/mine");
    assert_eq!(cfg.get::<i64>("b")?, 6);
    assert_eq!(cfg.get::<i64>("c")?, 7);
    assert_eq!(cfg.get::<String>("users.bob.shell")?, "/bin/zsh");
    Ok(())
}

/// Regression: keys of one map option read each other without a false
/// cycle (each key is merged on its own), while a real cycle between two
/// keys is still reported.
#[test]
fn keys_of_a_map_read_each_other() -> TestResult {
    let decl = Module::new("decl", |m| {
        m.option(
            "hosts",
            types::map(types::submodule(|s| {
                s.option("port", types::port(), |_| {});
            })),
            |_| {},
        );
    });
    let m = Module::new("m", |m| {
        m.define("hosts.a.port", 8000);
        m.define(
            "hosts.b.port",
            lazy(|c| Ok(c.get::<u16>("hosts.a.port")? + 1)),
        );
    });
    let cfg = eval(&[decl.clone(), m])?;
    assert_eq!(cfg.get::<u16>("hosts.b.port")?, 8001);
    assert_eq!(cfg.get::<BTreeMap<String, Value>>("hosts")?.len(), 2);
    let cyclic = Module::new("cyclic", |m| {
        m.define("hosts.a.port", lazy(|c| c.get::<u16>("hosts.b.port")));
        m.define("hosts.b.port", lazy(|c| c.get::<u16>("hosts.a.port")));
    });
    let errs = errors(&[decl, cyclic]);
    assert!(
        matches!(&errs[..], [Error::Cycle { chain }]
            if chain == &["hosts.a.port", "hosts.b.port", "hosts.a.port"]),
        "{errs:?}"
    );
    Ok(())
}

#[test]
fn a_definition_that_panics_leaves_no_false_cycle() {
    let m = Module::new("m", |m| {
        m.option("x", types::int(), |_| {});
        m.option("y", types::int(), |_| {});
        m.define("x", lazy(|_| -> Result<i64, Error> { panic!("kaboom") }));
        m.define("y", 1);
    });
    let cfg = Config::collect(&[m], None).expect("collects");
    for _ in 0..2 {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cfg.get::<i64>("x")));
        assert!(r.is_err(), "the definition panics each time, not a cycle");
    }
    assert_eq!(cfg.get::<i64>("y").ok(), Some(1));
}

#[test]
fn either_accepts_containers_and_identical_types_declared_twice_merge() -> TestResult {
    let a = Module::new("a", |m| {
        m.option(
            "x",
            types::either([types::str(), types::list(types::str())]),
            |_| {},
        );
        m.option(
            "y",
            types::either([types::int(), types::map(types::int())]),
            |_| {},
        );
        m.option("name", types::str(), |_| {});
        m.define("x", vec!["a", "b"]);
        m.define("y", BTreeMap::from([("k", 1)]));
        m.define("name", "n");
    });
    let b = Module::new("b", |m| {
        m.option("name", types::str(), |o| {
            o.description("Declared again, the same type.");
        });
        m.define("x", vec!["c"]);
    });
    let cfg = eval(&[a, b])?;
    assert_eq!(cfg.get::<Vec<String>>("x")?, ["a", "b", "c"]);
    assert_eq!(cfg.get::<i64>("y.k")?, 1);
    assert_eq!(cfg.get::<String>("name")?, "n");
    Ok(())
}

#[test]
fn a_rename_loop_a_field_declared_twice_and_several_bad_keys_are_errors() {
    let loops = Module::new("loops", |m| {
        m.option("x.z", types::int(), |_| {});
        m.renamed("x.y", "x.y.w");
        m.renamed("a", "b");
        m.renamed("b", "a");
        m.define("x.y", 1);
        m.define("a", 1);
    });
    let errs = errors(&[loops]);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs.iter()
            .all(|e| e.to_string().contains("renamed in a loop")),
        "{errs:?}"
    );

    let clash = Module::new("clash", |m| {
        m.option(
            "hosts",
            types::map(types::submodule(|s| {
                s.option("port", types::port(), |_| {});
                s.option("port", types::str(), |_| {});
            })),
            |_| {},
        );
    });
    let errs = errors(&[clash]);
    assert!(
        matches!(&errs[..], [Error::Declaration { option, .. }] if option == "hosts.port"),
        "{errs:?}"
    );

    let keys = Module::new("keys", |m| {
        m.define(
            "services.web",
            BTreeMap::from([("prot", Value::Int(1)), ("enabel", Value::Bool(true))]),
        );
    });
    let errs = errors(&[web(), keys]);
    assert_eq!(errs.len(), 2, "{errs:?}");
}

#[test]
fn a_field_may_default_to_its_entrys_key() -> TestResult {
    let decl = Module::new("decl", |m| {
        m.option(
            "accounts",
            types::map(types::submodule(|s| {
                s.option("name", types::str(), |o| {
                    o.default_key().description("The account's name.");
                });
                s.option("home", types::path(), |o| {
                    o.default_with("/home/<name>", |_| Ok("/home/unset"));
                });
            })),
            |_| {},
        );
    });
    let m = Module::new("m", |m| {
        m.define("accounts.alice", BTreeMap::<String, Value>::new());
        m.define("accounts.\"bob.smith\".home", "/srv/bob");
        m.define("accounts.carol.name", "Carol");
    });
    let cfg = eval(&[decl, m])?;
    assert_eq!(cfg.get::<String>("accounts.alice.name")?, "alice");
    assert_eq!(
        cfg.get::<String>("accounts.\"bob.smith\".name")?,
        "bob.smith"
    );
    assert_eq!(cfg.get::<String>("accounts.carol.name")?, "Carol");
    let json = cfg.options_json();
    assert_eq!(json["accounts.<name>.name"]["default"], "the entry's key");
    Ok(())
}

#[test]
fn map_keys_holding_a_nul_are_not_taken_for_deeper_keys() -> TestResult {
    // The memo tables key a node by its option and keys: the key `a\0b`
    // one level down must stay apart from the keys `a` then `b`.
    let decl = Module::new("decl", |m| {
        m.option(
            "m",
            types::map(types::map(types::map(types::int()))),
            |_| {},
        );
    });
    let defs = Module::new("defs", |m| {
        m.define(
            "m",
            BTreeMap::from([
                ("a\0b", BTreeMap::from([("c", BTreeMap::from([("x", 1)]))])),
                ("a", BTreeMap::from([("b", BTreeMap::from([("y", 2)]))])),
            ]),
        );
    });
    let cfg = eval(&[decl, defs])?;
    let m = cfg.get::<BTreeMap<String, BTreeMap<String, BTreeMap<String, i64>>>>("m")?;
    assert_eq!(
        m["a\0b"],
        BTreeMap::from([("c".into(), BTreeMap::from([("x".into(), 1)]))])
    );
    assert_eq!(
        m["a"],
        BTreeMap::from([("b".into(), BTreeMap::from([("y".into(), 2)]))])
    );
    assert_eq!(cfg.get::<i64>("m.a.b.y")?, 2);
    Ok(())
}
