//! The example fleet: two customers, each with web, application and
//! database machines, and two releases of the programs they run. Shared
//! by `examples/fleet.rs` (which builds every machine),
//! `examples/quickstart.rs` (which boots one) and the tests.

use std::error::Error;
use std::path::Path;

use bigtop::eval::drv::Platform;
use bigtop::eval::fleet::{Fleet, Machine};
use bigtop::eval::module::{force, Format, Module, PLATFORM};
use bigtop::eval::set::{PackageSet, Pkgs};
use bigtop::eval::trivial::{self, TreeEntry};

use bigtop::eval::system::ETC;

use crate::modules::{self, DB, SHOP, WEB};

/// A release of the package set: the programs the services run, each a
/// tiny HTTP server in Perl (which every Debian has), so that the example
/// builds in a blink and its machines really answer. It takes its port
/// from the configuration file given as its first argument (a `listen
/// N` or `port = N` line) or from `$PORT`, writes its process id to
/// `$PIDFILE` when set, answers `NAME VERSION`, and logs `reloaded` on
/// SIGHUP. (`examples/packages.rs` builds real C programs.)
pub fn release(platform: &Platform, version: &'static str) -> Pkgs {
    let program = move |name: &'static str| {
        move |a: &bigtop::eval::set::Args| {
            let server = format!(
                r#"$| = 1;
my $conf = shift // "";
my $port = $ENV{{PORT}};
if ($conf ne "" && open(my $f, "<", $conf)) {{
    while (<$f>) {{ $port = $1 if /^(?:listen|port)\s*=?\s*(\d+)/ }}
}}
die "{name}: no port in `$conf` or \$PORT
" unless $port;
if ($ENV{{PIDFILE}}) {{
    open(my $p, ">", $ENV{{PIDFILE}}) or die "{name}: $ENV{{PIDFILE}}: $!
";
    print $p "$$
";
    close $p;
}}
$SIG{{HUP}} = sub {{ print "{name}: reloaded
" }};
my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1:$port", Listen => 16, ReuseAddr => 1)
    or die "{name}: cannot listen on $port: $!
";
print "{name} {version} listening on 127.0.0.1:$port
";
while (1) {{
    my $c = $s->accept or next;
    print $c "HTTP/1.0 200 OK
Content-Type: text/plain

{name} {version}
";
    close $c;
}}
"#
            );
            let script = format!(
                "#!/bin/sh
echo \"{name} {version} starting with $*\"
exec perl -MIO::Socket::INET -e '{}' \"$@\"
",
                server.replace('\'', "'\\''")
            );
            trivial::write_tree(
                a.platform(),
                &format!("{name}-{version}"),
                [TreeEntry::File {
                    path: format!("bin/{name}"),
                    text: script.into(),
                    executable: true,
                }],
            )
        }
    };
    PackageSet::new(platform.clone())
        .add("webserver", program("webserver"))
        .add("shop", program("shop"))
        .add("db", program("db"))
        .eval()
}

/// The fleet: Acme (web, database, and a legacy web machine pinned to
/// last year's release) and Globex (web, database), with each machine's
/// inventory data from `examples/fleet/data/`.
pub fn fleet(platform: &Platform) -> Result<Fleet, Box<dyn Error>> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fleet/data");

    // A customer override: Globex caps its database below what the
    // inventory says, and greets its operators its own way.
    let globex = Module::new("customer/globex", |m| {
        m.set(DB.max_connections, force(150));
        m.set(
            ETC.entry("motd").text,
            "Globex production. Changes go through CAB.\n",
        );
    });
    let acme = Module::new("customer/acme", |m| {
        m.set(SHOP.database, "acme-db1:5432");
    });
    let web = Module::new("role/web", |m| {
        m.set(WEB.enable, true);
        m.set(SHOP.enable, true);
    });
    let db = Module::new("role/db", |m| {
        m.set(DB.enable, true);
    });
    let machine = |name: &str, release: &str, role: &str, customer: &Module| {
        let m = Machine::new(name, release)
            .tag(role)
            .tag(customer.name().trim_start_matches("customer/"))
            .module(customer.clone());
        // The inventory's data about the machine, if it has any.
        let file = data.join(format!("{name}.toml"));
        match std::fs::read_to_string(&file) {
            Ok(text) => Module::data(
                &format!("examples/fleet/data/{name}.toml"),
                Format::Toml,
                &text,
                PLATFORM,
            )
            .map(|d| m.module(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(m),
            Err(e) => Err(bigtop::eval::module::Error::Data {
                file: file.display().to_string(),
                reason: e.to_string(),
            }),
        }
    };
    Ok(Fleet::new(platform.clone())
        .release("2025.11", release(platform, "1.4"))
        .release("2026.11", release(platform, "2.0"))
        .module(modules::base())
        .module(modules::web_server())
        .module(modules::shop())
        .module(modules::database())
        .tag_module("web", web)
        .tag_module("db", db)
        .machine(machine("acme-web1", "2026.11", "web", &acme)?)
        .machine(machine("acme-db1", "2026.11", "db", &acme)?)
        // Acme's old shop front stays on last year's release until they
        // choose to move it.
        .machine(machine("acme-legacy", "2025.11", "web", &acme)?)
        .machine(machine("globex-web1", "2026.11", "web", &globex)?)
        .machine(machine("globex-db1", "2026.11", "db", &globex)?))
}
