//! The service modules of the fleet example: a web server that
//! applications extend with virtual hosts, an application, a database,
//! and the base every machine gets.

use std::collections::BTreeMap;

use bigtop::eval::drv::Drv;
use bigtop::eval::module::{default, lazy, types, Module, Value};
use bigtop::eval::text;

/// The web server: its own options under `services.web`, virtual hosts
/// added by applications (it owns how they merge and renders them), and
/// the service it runs.
pub fn web_server() -> Module {
    Module::new("web-server", |m| {
        m.option("services.web.enable", types::bool(), |o| {
            o.default(false)
                .description("Whether to run the web server.");
        });
        m.option("services.web.port", types::port(), |o| {
            o.default(80).description("The port it listens on.");
        });
        m.option(
            "services.web.vhosts",
            types::map(types::submodule(|s| {
                s.option("upstream", types::str(), |o| {
                    o.description("Where requests go, `host:port`.");
                });
                s.option("tls", types::bool(), |o| {
                    o.default(true);
                });
            })),
            |o| {
                o.default(BTreeMap::<String, Value>::new())
                    .description("Virtual hosts, by host name: each application adds its own.");
            },
        );
        m.when(
            |c| c.get("services.web.enable"),
            |m| {
                m.define(
                    r#"etc."web/vhosts.conf".text"#,
                    lazy(|c| {
                        let port: u16 = c.get("services.web.port")?;
                        let hosts: BTreeMap<String, Value> = c.get("services.web.vhosts")?;
                        let mut out = format!("listen {port}\n");
                        for (name, h) in hosts {
                            if let Value::Map(f) = h {
                                out.push_str(&format!(
                                    "vhost {name} -> {} tls={}\n",
                                    f["upstream"], f["tls"]
                                ));
                            }
                        }
                        Ok(out)
                    }),
                );
                m.define("users.users.www.group", "www");
                m.define("users.groups.www", BTreeMap::<String, Value>::new());
                m.define(
                    "system.services.web.argv",
                    lazy(|c| {
                        let server: Drv = c.pkgs()?.get("webserver")?;
                        Ok(vec![
                            text!("{}/bin/webserver", server),
                            text!("/etc/web/vhosts.conf"),
                        ])
                    }),
                );
                m.define("system.services.web.description", "The web server");
                m.define("system.services.web.user", "www");
                m.define("system.services.web.group", "www");
                m.define("system.services.web.on_change", "reload");
                m.define(
                    "system.services.web.environment.PIDFILE",
                    "/run/web/web.pid",
                );
                m.define(
                    "system.services.web.reload",
                    vec!["/bin/sh", "-c", "kill -HUP $(cat /run/web/web.pid)"],
                );
                // Its runtime directory, writable by its user.
                m.define(
                    "system.activation.web-run.script",
                    "mkdir -p /run/web\nchown www:www /run/web",
                );
                m.define(
                    "system.services.web.restart_triggers",
                    lazy(|c| Ok(vec![c.get::<String>(r#"etc."web/vhosts.conf".text"#)?])),
                );
                m.define(
                    "system.services.web.ready.tcp_port",
                    lazy(|c| c.get::<u16>("services.web.port")),
                );
                m.define(
                    "system.packages",
                    lazy(|c| Ok(vec![c.pkgs()?.get("webserver")?])),
                );
            },
        );
    })
}

/// The shop application: a service, and a virtual host on the machine's
/// web server when it has one.
pub fn shop() -> Module {
    Module::new("shop", |m| {
        m.option("services.shop.enable", types::bool(), |o| {
            o.default(false);
        });
        m.option("services.shop.hostname", types::non_empty_str(), |o| {
            o.description("The host name customers reach it at.");
        });
        m.option("services.shop.database", types::str(), |o| {
            o.default("localhost:5432")
                .description("The database, `host:port`.");
        });
        m.when(
            |c| c.get("services.shop.enable"),
            |m| {
                m.define(
                    "system.services.shop.argv",
                    lazy(|c| {
                        let shop: Drv = c.pkgs()?.get("shop")?;
                        Ok(vec![text!("{}/bin/shop", shop)])
                    }),
                );
                m.define(
                    "system.services.shop.environment.DATABASE",
                    lazy(|c| c.get::<String>("services.shop.database")),
                );
                m.define("system.services.shop.environment.PORT", "8000");
                m.define("system.services.shop.ready.tcp_port", 8000);
                m.define(
                    "services.web.vhosts",
                    lazy(|c| {
                        let host: String = c.get("services.shop.hostname")?;
                        let vhost = BTreeMap::from([("upstream", Value::from("127.0.0.1:8000"))]);
                        Ok(BTreeMap::from([(host, vhost)]))
                    }),
                );
            },
        );
    })
}

/// The database.
pub fn database() -> Module {
    Module::new("database", |m| {
        m.option("services.db.enable", types::bool(), |o| {
            o.default(false);
        });
        m.option("services.db.port", types::port(), |o| {
            o.default(5432);
        });
        m.option(
            "services.db.max_connections",
            types::between(1, 10_000),
            |o| {
                o.default(100).description("Connections accepted at once.");
            },
        );
        m.when(
            |c| c.get("services.db.enable"),
            |m| {
                m.define(
                    r#"etc."db/db.conf".text"#,
                    lazy(|c| {
                        Ok(format!(
                            "port = {}\nmax_connections = {}\n",
                            c.get::<u16>("services.db.port")?,
                            c.get::<u16>("services.db.max_connections")?
                        ))
                    }),
                );
                m.define("users.users.db.group", "db");
                m.define("users.users.db.home", "/var/lib/db");
                m.define("users.groups.db", BTreeMap::<String, Value>::new());
                m.define(
                    "system.activation.db-dir.script",
                    "mkdir -p /var/lib/db\nchown db:db /var/lib/db",
                );
                // The base module's step makes /var/lib.
                m.define("system.activation.db-dir.after", vec!["var-dirs"]);
                m.define(
                    "system.services.db.argv",
                    lazy(|c| {
                        let db: Drv = c.pkgs()?.get("db")?;
                        Ok(vec![text!("{}/bin/db", db), text!("/etc/db/db.conf")])
                    }),
                );
                m.define("system.services.db.user", "db");
                m.define("system.services.db.group", "db");
                m.define(
                    "system.services.db.restart_triggers",
                    lazy(|c| Ok(vec![c.get::<String>(r#"etc."db/db.conf".text"#)?])),
                );
            },
        );
    })
}

/// What every machine gets.
pub fn base() -> Module {
    Module::new("base", |m| {
        m.define(
            "etc.motd.text",
            default("This machine is managed by bigtop.\n"),
        );
        m.define("users.users.ops.group", "wheel");
        m.define("users.users.ops.system", false);
        m.define("users.users.ops.shell", "/bin/sh");
        m.define("users.groups.wheel", BTreeMap::<String, Value>::new());
        m.define(
            "system.activation.var-dirs.script",
            "mkdir -p /var/log /var/lib",
        );
    })
}
