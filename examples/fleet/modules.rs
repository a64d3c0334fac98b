//! The service modules of the fleet example: a web server that
//! applications extend with virtual hosts, an application, a database,
//! and the base every machine gets — each module's options a Rust struct,
//! defined and read through typed keys.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use bigtop::eval::drv::Drv;
use bigtop::eval::module::{default, empty, lazy, types, Module};
use bigtop::eval::system::{self, OnChange, ACTIVATION, ETC, GROUPS, SERVICES, USERS};
use bigtop::eval::{text, Options};

/// One site of the web server.
#[derive(Options, Debug, Clone, PartialEq)]
pub struct Vhost {
    /// Where requests go, `host:port`.
    #[option(required)]
    pub upstream: String,
    /// Whether it is served over TLS.
    #[option(default = true)]
    pub tls: bool,
}

/// The web server's options.
#[derive(Options, Debug, Clone, PartialEq)]
pub struct Web {
    /// Whether to run the web server.
    pub enable: bool,
    /// The port it listens on.
    #[option(ty = types::port(), default = 80)]
    pub port: u16,
    /// Virtual hosts, by host name: each application adds its own.
    pub vhosts: BTreeMap<String, Vhost>,
}

/// The shop's options.
#[derive(Options, Debug, Clone, PartialEq)]
pub struct Shop {
    /// Whether to run the shop.
    pub enable: bool,
    /// The host name customers reach it at.
    #[option(ty = types::non_empty_str())]
    pub hostname: String,
    /// The database, `host:port`.
    #[option(default = "localhost:5432")]
    pub database: String,
}

/// The database's options.
#[derive(Options, Debug, Clone, PartialEq)]
pub struct Db {
    /// Whether to run the database.
    pub enable: bool,
    /// The port it listens on.
    #[option(ty = types::port(), default = 5432)]
    pub port: u16,
    /// Connections accepted at once.
    #[option(ty = types::between(1, 10_000), default = 100)]
    pub max_connections: u16,
}

/// `services.web`.
pub static WEB: LazyLock<WebKey> = LazyLock::new(|| Web::at("services.web"));
/// `services.shop`.
pub static SHOP: LazyLock<ShopKey> = LazyLock::new(|| Shop::at("services.shop"));
/// `services.db`.
pub static DB: LazyLock<DbKey> = LazyLock::new(|| Db::at("services.db"));

/// The web server: its own options under `services.web`, virtual hosts
/// added by applications (it owns how they merge and renders them), and
/// the service it runs.
pub fn web_server() -> Module {
    Module::new("web-server", |m| {
        let web = m.options::<Web>("services.web");
        let conf = ETC.entry("web/vhosts.conf").text;
        m.when(
            move |c| c.read(web.enable),
            move |m| {
                m.set(
                    conf,
                    lazy(move |c| {
                        let w = c.read(web)?;
                        let mut out = format!("listen {}\n", w.port);
                        for (name, h) in w.vhosts {
                            out.push_str(&format!(
                                "vhost {name} -> {:?} tls={}\n",
                                h.upstream, h.tls
                            ));
                        }
                        Ok(out)
                    }),
                );
                m.set(USERS.entry("www").group, "www");
                m.set(GROUPS.entry("www"), empty());
                let svc = SERVICES.entry("web");
                m.set(
                    svc.argv,
                    lazy(|c| {
                        let server: Drv = c.pkgs()?.get("webserver")?;
                        Ok(vec![
                            text!("{}/bin/webserver", server),
                            text!("/etc/web/vhosts.conf"),
                        ])
                    }),
                );
                m.set(svc.description, "The web server");
                m.set(svc.user, "www");
                m.set(svc.group, "www");
                m.set(svc.on_change, OnChange::Reload);
                m.set(svc.environment.entry("PIDFILE"), "/run/web/web.pid");
                m.set(
                    svc.reload,
                    Some(vec!["/bin/sh", "-c", "kill -HUP $(cat /run/web/web.pid)"]),
                );
                // Its runtime directory, writable by its user.
                m.set(
                    ACTIVATION.entry("web-run").script,
                    "mkdir -p /run/web\nchown www:www /run/web",
                );
                m.set(
                    svc.restart_triggers,
                    lazy(move |c| Ok(vec![c.read(conf)?.unwrap_or_default()])),
                );
                m.set(svc.ready.some().tcp_port, lazy(move |c| c.read(web.port)));
                m.set(
                    system::PACKAGES,
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
        let shop = m.options::<Shop>("services.shop");
        let web = *WEB;
        m.when(
            move |c| c.read(shop.enable),
            move |m| {
                let svc = SERVICES.entry("shop");
                m.set(
                    svc.argv,
                    lazy(|c| {
                        let shop: Drv = c.pkgs()?.get("shop")?;
                        Ok(vec![text!("{}/bin/shop", shop)])
                    }),
                );
                m.set(
                    svc.environment.entry("DATABASE"),
                    lazy(move |c| c.read(shop.database)),
                );
                m.set(svc.environment.entry("PORT"), "8000");
                m.set(svc.ready.some().tcp_port, 8000);
                m.set(
                    web.vhosts,
                    lazy(move |c| {
                        let host = c.read(shop.hostname)?;
                        let vhost = Vhost {
                            upstream: "127.0.0.1:8000".into(),
                            tls: true,
                        };
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
        let db = m.options::<Db>("services.db");
        let conf = ETC.entry("db/db.conf").text;
        m.when(
            move |c| c.read(db.enable),
            move |m| {
                m.set(
                    conf,
                    lazy(move |c| {
                        let d = c.read(db)?;
                        Ok(format!(
                            "port = {}\nmax_connections = {}\n",
                            d.port, d.max_connections
                        ))
                    }),
                );
                m.set(USERS.entry("db").group, "db");
                m.set(USERS.entry("db").home, "/var/lib/db");
                m.set(GROUPS.entry("db"), empty());
                let dir = ACTIVATION.entry("db-dir");
                m.set(dir.script, "mkdir -p /var/lib/db\nchown db:db /var/lib/db");
                // The base module's step makes /var/lib.
                m.set(dir.after, ["var-dirs"]);
                let svc = SERVICES.entry("db");
                m.set(
                    svc.argv,
                    lazy(|c| {
                        let db: Drv = c.pkgs()?.get("db")?;
                        Ok(vec![text!("{}/bin/db", db), text!("/etc/db/db.conf")])
                    }),
                );
                m.set(svc.user, "db");
                m.set(svc.group, "db");
                m.set(
                    svc.restart_triggers,
                    lazy(move |c| Ok(vec![c.read(conf)?.unwrap_or_default()])),
                );
            },
        );
    })
}

/// What every machine gets.
pub fn base() -> Module {
    Module::new("base", |m| {
        m.set(
            ETC.entry("motd").text,
            default("This machine is managed by bigtop.\n"),
        );
        let ops = USERS.entry("ops");
        m.set(ops.group, "wheel");
        m.set(ops.system, false);
        m.set(ops.shell, "/bin/sh");
        m.set(GROUPS.entry("wheel"), empty());
        m.set(
            ACTIVATION.entry("var-dirs").script,
            "mkdir -p /var/log /var/lib",
        );
    })
}
