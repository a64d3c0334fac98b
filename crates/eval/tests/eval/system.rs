//! Services, /etc, users, activation steps and the system toplevel.

use std::collections::BTreeMap;

use bigtop_eval::drv::Platform;
use bigtop_eval::module::{lazy, types, Config, Error, Module, Value};
use bigtop_eval::system::{self, OnChange, Restart};
use bigtop_eval::{text, trivial};

use crate::TestResult;

/// A web server that other modules extend with virtual hosts (the Guix
/// way): it owns how they merge (a map of submodules) and renders them.
fn web_server() -> Module {
    Module::new("web-server", |m| {
        m.option(
            "services.web.vhosts",
            types::map(types::submodule(|s| {
                s.option("root", types::path(), |_| {});
                s.option("port", types::port(), |o| {
                    o.default(80);
                });
            })),
            |o| {
                o.default(BTreeMap::<String, Value>::new())
                    .description("Virtual hosts, added by each application.");
            },
        );
        m.define("users.users.www", BTreeMap::from([("group", "www")]));
        m.define("users.groups.www", BTreeMap::<String, Value>::new());
        m.define(
            r#"etc."web/vhosts.conf".text"#,
            lazy(|c| {
                let hosts: BTreeMap<String, Value> = c.get("services.web.vhosts")?;
                let mut out = String::new();
                for (name, h) in hosts {
                    let Value::Map(f) = h else { continue };
                    out.push_str(&format!("server {name} {} {}\n", f["port"], f["root"]));
                }
                Ok(out)
            }),
        );
        m.define("system.services.web.description", "The web server");
        m.define(
            "system.services.web.argv",
            vec!["/bin/sh", "-c", "exec sleep 1000"],
        );
        m.define("system.services.web.user", "www");
        m.define("system.services.web.group", "www");
        m.define(
            "system.services.web.restart_triggers",
            lazy(|c| Ok(vec![c.get::<String>(r#"etc."web/vhosts.conf".text"#)?])),
        );
        m.define(
            "system.services.web.ready",
            BTreeMap::from([("tcp_port", Value::Int(80))]),
        );
    })
}

fn app(name: &'static str, port: u16) -> Module {
    Module::new(format!("app-{name}"), move |m| {
        m.define(
            &format!("services.web.vhosts.{name}.root"),
            format!("/srv/{name}"),
        );
        m.define(&format!("services.web.vhosts.{name}.port"), port);
        m.define(
            &format!("system.services.{name}.argv"),
            vec!["/bin/sh", "-c", "exec sleep 1000"],
        );
        m.define(&format!("system.services.{name}.requires"), vec!["web"]);
        m.define(&format!("system.services.{name}.environment.APP"), name);
        m.define(&format!("system.services.{name}.on_change"), "reload");
        m.define(
            &format!("system.services.{name}.reload"),
            vec!["/bin/kill", "-HUP", "1"],
        );
    })
}

/// The text of the file `path` of a toplevel, from its derivation.
fn tree_file(top: &system::Toplevel, path: &str) -> String {
    let entries: serde_json::Value =
        serde_json::from_str(&top.drv.derivation().env["entries"]).expect("entries are JSON");
    entries
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["path"] == path)
        .and_then(|e| e["text"].as_str())
        .unwrap_or_else(|| panic!("no `{path}` in the toplevel"))
        .to_owned()
}

fn host(extra: impl FnOnce(&mut bigtop_eval::module::ModuleBuilder) + 'static) -> Module {
    Module::new("host", move |m| {
        m.import(&system::module());
        m.import(&web_server());
        m.define("system.name", "web1");
        m.define("etc.motd.text", "welcome\n");
        m.define("system.activation.dirs.script", "mkdir -p /var/lib/web");
        m.define("system.activation.perms.script", "chown www /var/lib/web");
        m.define("system.activation.perms.after", vec!["dirs"]);
        extra(m);
    })
}

#[test]
fn services_render_for_systemd_and_s6_and_the_manifest_hashes_each() -> TestResult {
    let p = Platform::default();
    let tool = trivial::write_script(&p, "hello", "/bin/sh", "echo hello\n")?;
    let t2 = tool.clone();
    let cfg = Config::eval(
        &[
            host(move |m| {
                m.define("system.services.hello.argv", vec![text!("{}", t2)]);
                m.define("system.services.hello.restart", "never");
                m.define("system.packages", vec![t2.clone()]);
            }),
            app("shop", 8080),
            app("blog", 8081),
        ],
        None,
    )?;
    let services = system::services(&cfg)?;
    assert_eq!(
        services.keys().collect::<Vec<_>>(),
        ["blog", "hello", "shop", "web"]
    );
    let shop = &services["shop"];
    assert_eq!(shop.on_change, OnChange::Reload);
    assert_eq!(services["hello"].restart, Restart::Never);
    // A configuration's text triggers a restart by its content hash: the
    // manifest does not carry the file twice.
    let conf = "server blog 8081 \"/srv/blog\"\nserver shop 8080 \"/srv/shop\"\n";
    let hash = bigtop_core::Hash::digest(bigtop_core::HashAlgo::Blake3, conf.as_bytes());
    assert_eq!(services["web"].restart_triggers, [hash.to_string()]);

    let top = system::toplevel(&cfg, &p)?;
    let m = &top.manifest;
    assert_eq!(m["name"], "web1");
    assert_eq!(
        m["activation"]["order"],
        serde_json::json!(["dirs", "perms"])
    );
    assert!(m["services"]["web"]["hash"]
        .as_str()
        .unwrap_or("")
        .starts_with("blake3:"));
    assert_eq!(
        m["services"]["shop"]["requires"],
        serde_json::json!(["web"])
    );
    assert_eq!(m["etc"]["motd"]["mode"], "0444");
    // The service's program is a dependency of the toplevel.
    let inputs = top.drv.closure();
    assert!(inputs.iter().any(|d| d.name() == "hello"), "{inputs:?}");

    let file = |path: &str| tree_file(&top, path);
    insta::assert_snapshot!(file("systemd/shop.service"), @r#"
    [Unit]
    Requires=web.service
    After=web.service

    [Service]
    Type=simple
    ExecStart="/bin/sh" "-c" "exec sleep 1000"
    ExecReload="/bin/kill" "-HUP" "1"
    Environment="APP=shop"
    User=root
    Group=root
    Restart=on-failure
    RestartSec=1000ms

    [Install]
    WantedBy=multi-user.target
    "#);
    insta::assert_snapshot!(file("s6/web/run"), @r#"
    #!/bin/sh
    exec 2>&1
    exec s6-envuidgid 'www' s6-envuidgid -g 'www' s6-applyuidgid -Uz env -i '/bin/sh' '-c' 'exec sleep 1000'
    "#);
    assert_eq!(file("s6/hello/finish"), "#!/bin/sh\nexit 125\n");
    assert_eq!(
        file("s6/web/check"),
        "#!/bin/sh\nnc -z 127.0.0.1 80 || exit 1\nexit 0\n"
    );
    assert_eq!(file("etc/motd"), "welcome\n");
    assert_eq!(
        file("activation/perms"),
        "#!/bin/sh\nset -e\nchown www /var/lib/web\n"
    );
    Ok(())
}

#[test]
fn a_service_hash_changes_only_with_that_service() -> TestResult {
    let p = Platform::default();
    let hashes = |port: u16,
                  env: &'static str|
     -> Result<BTreeMap<String, String>, Box<dyn std::error::Error>> {
        let cfg = Config::eval(
            &[
                host(move |m| {
                    m.define(
                        "system.services.worker.argv",
                        vec!["/bin/sh", "-c", "exec sleep 1000"],
                    );
                    m.define("system.services.worker.environment.MODE", env);
                }),
                app("shop", port),
            ],
            None,
        )?;
        let top = system::toplevel(&cfg, &p)?;
        Ok(top.manifest["services"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v["hash"].as_str().unwrap_or("").to_owned()))
            .collect())
    };
    let a = hashes(8080, "fast")?;
    let b = hashes(8080, "slow")?;
    let c = hashes(9090, "fast")?;
    let changed = |x: &BTreeMap<String, String>, y: &BTreeMap<String, String>| -> Vec<String> {
        x.iter()
            .filter(|(k, v)| y[*k] != **v)
            .map(|(k, _)| k.clone())
            .collect()
    };
    assert_eq!(changed(&a, &b), ["worker"]);
    // The vhost's port changes the web server's configuration file, a
    // restart trigger of `web`: only `web` changes.
    assert_eq!(changed(&a, &c), ["web"]);
    Ok(())
}

#[test]
fn two_applications_claiming_one_vhost_differently_conflict_naming_both() {
    let other_shop = Module::new("other-shop", |m| {
        m.define("services.web.vhosts.shop.root", "/srv/elsewhere");
    });
    let errs = Config::eval(&[host(|_| {}), app("shop", 8080), other_shop], None)
        .err()
        .expect("a conflict")
        .errors;
    assert!(
        errs.iter().any(|e| matches!(e, Error::Conflict { option, defs, .. }
            if option == "services.web.vhosts.shop.root"
                && defs.iter().map(|d| &*d.module).collect::<Vec<_>>() == ["app-shop", "other-shop"])),
        "{errs:?}"
    );
}

#[test]
fn the_system_module_checks_what_the_toplevel_relies_on() {
    let broken = host(|m| {
        m.define("system.services.a.argv", Vec::<String>::new());
        m.define("system.services.a.requires", vec!["nonexistent"]);
        m.define("system.services.a.user", "nobody-here");
        m.define("system.services.b.argv", vec!["/bin/true"]);
        m.define("system.services.b.on_change", "reload");
        m.define("etc.both.text", "x");
        m.define("etc.both.source", "/etc/hosts");
        m.define("system.activation.x.script", "true");
        m.define("system.activation.x.after", vec!["y"]);
        m.define("system.activation.y.script", "true");
        m.define("system.activation.y.after", vec!["x"]);
    });
    let errs = Config::eval(&[broken], None).err().expect("errors").errors;
    let [Error::Assertion {
        module, message, ..
    }] = &errs[..]
    else {
        panic!("expected the system module's assertion, got {errs:?}");
    };
    assert_eq!(&**module, "bigtop/system");
    for want in [
        "service `a` has an empty `argv`",
        "service `a` depends on `nonexistent`",
        "service `a` runs as user `nobody-here`",
        "service `b` reloads on change but has no `reload` command",
        "`etc.both` needs exactly one of `text` and `source`",
        "activation steps `x`, `y` come after each other in a cycle",
    ] {
        assert!(message.contains(want), "missing {want:?} in {message}");
    }
}

#[test]
fn a_disabled_service_is_left_out() -> TestResult {
    let cfg = Config::eval(
        &[host(|m| {
            m.define("system.services.web.enable", false);
        })],
        None,
    )?;
    let top = system::toplevel(&cfg, &Platform::default())?;
    assert_eq!(top.manifest["services"], serde_json::json!({}));
    Ok(())
}

/// Regression: what systemd would expand or read as another directive is
/// escaped in each place by its own rule, and names that would break a
/// unit or a directory are refused.
#[test]
fn systemd_and_s6_renderings_escape_each_by_its_rules() -> TestResult {
    let cfg = Config::eval(
        &[host(|m| {
            m.define(
                "system.services.odd.argv",
                vec![
                    "/bin/echo",
                    "50% of $HOME",
                    "it's \"quoted\"",
                    "two\nlines",
                    "cr\rbell\u{7}",
                ],
            );
            m.define("system.services.odd.environment.PS1", "$HOME 50%");
            m.define("system.services.odd.description", "Runs 50% of the time");
            m.define("system.services.odd.restart_delay_ms", 2500);
        })],
        None,
    )?;
    let top = system::toplevel(&cfg, &Platform::default())?;
    let file = |path: &str| tree_file(&top, path);
    let unit = file("systemd/odd.service");
    assert!(
        unit.contains("Description=Runs 50%% of the time\n"),
        "{unit}"
    );
    assert!(
        unit.contains(
            r#"ExecStart="/bin/echo" "50%% of $$HOME" "it's \"quoted\"" "two\nlines" "cr\rbell\x07""#
        ),
        "{unit}"
    );
    // `Environment=` expands no variables: `$` stays as it is.
    assert!(unit.contains(r#"Environment="PS1=$HOME 50%%""#), "{unit}");
    assert!(unit.contains("RestartSec=2500ms"), "{unit}");
    let run = file("s6/odd/run");
    assert!(
        run.contains(
            r#"env -i 'PS1=$HOME 50%' '/bin/echo' '50% of $HOME' 'it'\''s "quoted"' 'two"#
        ),
        "{run}"
    );
    let finish = file("s6/odd/finish");
    assert!(finish.contains("sleep 2\nexit 0\n"), "{finish}");
    assert!(finish.contains("1|2|13|15) exit 125"), "{finish}");

    let bad = host(|m| {
        m.define("system.services.\"a b\".argv", vec!["/bin/true"]);
        m.define("system.services.ok.argv", vec!["/bin/true"]);
        m.define("system.services.envy.argv", vec!["/bin/true"]);
        m.define("system.services.envy.environment.\"BAD-NAME\"", "x");
        m.define(
            "system.services.ok.working_directory",
            "/srv/x\nExecStartPre=/bin/false",
        );
    });
    let errs = Config::eval(&[bad], None).err().expect("errors").errors;
    let text = errs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    for want in [
        "service name `a b` must be",
        "`BAD-NAME` is not an environment variable name",
        "holds a control character",
    ] {
        assert!(text.contains(want), "missing {want:?} in {text}");
    }
    Ok(())
}

/// Regression: a condition may read one service to add another (a monitor
/// for the web server): conditions below a key of a map are checked when
/// that key is merged, not when the map is split.
#[test]
fn a_condition_may_read_one_key_of_a_map_to_define_another() -> TestResult {
    let monitor = Module::new("monitor", |m| {
        m.when(
            |c| c.get::<bool>("system.services.web.enable"),
            |m| {
                m.define("system.services.monitor.argv", vec!["/bin/true"]);
            },
        );
        m.when(
            |c| c.get::<bool>("system.services.web.enable"),
            |m| {
                m.define(
                    "system.services.monitor.description",
                    lazy(|c| {
                        Ok(format!(
                            "Watches the web server, which runs as {}",
                            c.get::<String>("system.services.web.user")?
                        ))
                    }),
                );
                m.define("system.services.monitor.after", vec!["web"]);
            },
        );
        m.when(
            |c| Ok(c.get::<String>("system.services.web.user")? == "nobody"),
            |m| {
                m.define("system.services.never.argv", vec!["/bin/false"]);
            },
        );
    });
    let cfg = Config::eval(&[host(|_| {}), monitor], None).map_err(|e| e.to_string())?;
    let services = system::services(&cfg)?;
    assert_eq!(services.keys().collect::<Vec<_>>(), ["monitor", "web"]);
    assert_eq!(
        services["monitor"].description,
        "Watches the web server, which runs as www"
    );
    // A key whose every definition is off is not there.
    assert!(cfg.get::<Value>("system.services.never").is_err());

    // Which services exist cannot depend on which services exist.
    let circular = Module::new("circular", |m| {
        m.when(
            |c| Ok(c.keys("system.services")?.contains(&"web".to_owned())),
            |m| {
                m.define("system.services.echo.argv", vec!["/bin/true"]);
            },
        );
    });
    let errs = Config::eval(&[host(|_| {}), circular], None)
        .err()
        .expect("a cycle")
        .errors;
    assert!(
        errs.iter().any(|e| matches!(e, Error::Cycle { chain } if chain.contains(&"system.services (its keys)".to_owned()))),
        "{errs:?}"
    );
    Ok(())
}

/// Fields of one service read each other: each field of a map entry is
/// merged on its own, as an option is.
#[test]
fn fields_of_one_service_read_each_other() -> TestResult {
    let cfg = Config::eval(
        &[host(|m| {
            m.define("system.services.api.environment.PORT", "8123");
            m.define(
                "system.services.api.ready.tcp_port",
                lazy(|c| {
                    let port: String = c.get("system.services.api.environment.PORT")?;
                    port.parse::<u16>().map_err(|e| Error::msg(e.to_string()))
                }),
            );
            m.define(
                "system.services.api.argv",
                lazy(|c| {
                    let port: u16 = c.get("system.services.api.ready.tcp_port")?;
                    Ok(vec!["/bin/api".to_owned(), format!("--port={port}")])
                }),
            );
        })],
        None,
    )
    .map_err(|e| e.to_string())?;
    let api = &system::services(&cfg)?["api"];
    assert_eq!(api.argv, ["/bin/api", "--port=8123"]);
    assert_eq!(api.ready.as_ref().and_then(|r| r.tcp_port), Some(8123));
    Ok(())
}

#[test]
fn units_render_at_evaluation_time_with_targets_limits_readiness_and_extra_keys() -> TestResult {
    use bigtop_eval::system::{ReadyOptions, SERVICES};
    let cfg = Config::eval(
        &[host(|m| {
            let api = SERVICES.entry("api");
            m.set(api.argv, ["/bin/api"]);
            m.set(api.requires, ["db", "network-online.target"]);
            m.set(api.limits.open_files, 4096);
            m.set(api.systemd.service.entry("LimitMEMLOCK"), "infinity");
            m.set(
                api.ready,
                Some(ReadyOptions {
                    tcp_port: None,
                    command: None,
                    timeout_ms: 10_000,
                    notify: true,
                }),
            );
            m.set(SERVICES.entry("db").argv, ["/bin/db"]);
            // One field of an optional struct: the rest at their defaults.
            m.set(SERVICES.entry("db").ready.some().tcp_port, 5432);
        })],
        None,
    )?;
    let services = system::services(&cfg)?;
    let ready = services["db"].ready.as_ref().expect("a readiness check");
    assert_eq!(
        (ready.tcp_port, ready.timeout_ms, ready.notify),
        (Some(5432), 30_000, false)
    );
    let unit = system::render_systemd(&services["api"]);
    for line in [
        "Requires=db.service network-online.target",
        "After=db.service network-online.target",
        "Type=notify",
        "TimeoutStartSec=10000ms",
        "LimitNOFILE=4096",
        "LimitMEMLOCK=infinity",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing in\n{unit}");
    }
    // A service that notifies waits for nothing else.
    assert!(!unit.contains("ExecStartPost"), "{unit}");
    let s6 = system::render_s6(&services["api"]);
    let paths: Vec<&str> = s6.iter().map(|f| f.path.as_str()).collect();
    // s6 has no targets: only the service dependency is kept.
    assert!(paths.contains(&"dependencies.d/db"), "{paths:?}");
    assert!(
        !paths.iter().any(|p| p.contains("network-online")),
        "{paths:?}"
    );
    let run = &s6
        .iter()
        .find(|f| f.path == "run")
        .expect("a run script")
        .text;
    assert!(
        run.contains("exec prlimit --nofile=4096:4096 env -i"),
        "{run}"
    );

    // A dependency that is neither an enabled service nor a unit, and a
    // systemd key that would break the unit, are named.
    let bad = host(|m| {
        let api = SERVICES.entry("api");
        m.set(api.argv, ["/bin/api"]);
        m.set(api.after, ["network-online"]);
        m.set(api.systemd.service.entry("Exec Start"), "/bin/evil");
        m.set(api.systemd.service.entry("Environment"), "A=1\\");
        m.set(
            api.systemd.unit.entry("Documentation"),
            "x\u{0}ExecStartPre=/bin/evil",
        );
    });
    let e = Config::eval(&[bad], None)
        .err()
        .expect("errors")
        .to_string();
    assert!(
        e.contains("depends on `network-online`, which is not an enabled service"),
        "{e}"
    );
    assert!(
        e.contains("`Exec Start` is not a systemd setting name"),
        "{e}"
    );
    Ok(())
}

#[test]
fn an_unquoted_key_holding_a_dot_suggests_the_quoted_form() -> TestResult {
    for (path, want) in [
        (
            "etc.nginx.conf.text",
            r#"did you mean `etc."nginx.conf".text`?"#,
        ),
        (
            "etc.foo/x.conf.text",
            r#"did you mean `etc."foo/x.conf".text`?"#,
        ),
    ] {
        let e = Config::eval(
            &[host(|m| {
                m.define(path, "x\n");
            })],
            None,
        )
        .err()
        .expect("an unknown field")
        .to_string();
        assert!(e.contains(want), "{path}: {e}");
    }
    Ok(())
}
