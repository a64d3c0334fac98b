//! `store-bench`: one measured store operation per run, on a chroot store
//! at DIR (the store lives in `DIR/bigtop/store`), plus generators that
//! write the same shapes for Nix. `benches/compare-nix-store.sh` times
//! these side by side with `nix-store`.
//!
//! ```text
//! store-bench init DIR                 create an empty store
//! store-bench register DIR N           add N small text paths in one batch
//! store-bench add-files DIR SRC        add every file in SRC in one batch
//! store-bench populate-graph DIR N     add an N-path graph; print its top path
//! store-bench closure DIR PATH         print the closure of PATH, one path a line
//! store-bench populate-garbage DIR N graph|flat
//!                                      add N paths that nothing roots, as a graph or flat
//! store-bench gc DIR                   collect garbage; print what it deleted
//! store-bench write-files DIR N        write the N files of `register`, for `nix-store --add`
//! store-bench nix-dump register|graph N OUT
//! store-bench nix-dump garbage-graph|garbage-flat N OUT ROOT
//!                                      write a `nix-store --load-db` dump of the same N paths
//!                                      (garbage: also their files, under ROOT/nix/store);
//!                                      print the top path
//! ```

use std::error::Error;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bigtop_benches::shapes::{self, Shape};
use bigtop_store::{GcOptions, Store};

const USAGE: &str = "usage: store-bench init DIR | register DIR N | add-files DIR SRC | \
populate-graph DIR N | closure DIR PATH | populate-garbage DIR N graph|flat | gc DIR | \
write-files DIR N | nix-dump register|graph N OUT | nix-dump garbage-graph|garbage-flat N OUT ROOT";

/// Names of the paths of each set, so that the sets never collide.
const REGISTER: &str = "f";
const GRAPH: &str = "g";
const GARBAGE_GRAPH: &str = "x";
const GARBAGE_FLAT: &str = "y";

fn garbage_shape(shape: &str) -> Result<(Shape, &'static str), Box<dyn Error>> {
    match shape {
        "graph" => Ok((Shape::Graph, GARBAGE_GRAPH)),
        "flat" => Ok((Shape::Flat, GARBAGE_FLAT)),
        _ => Err(format!("unknown shape `{shape}`: graph or flat").into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn count(s: &str) -> Result<usize, Box<dyn Error>> {
    s.replace('_', "")
        .parse()
        .map_err(|e| format!("`{s}` is not a count: {e}").into())
}

fn run(args: &[&str]) -> Result<(), Box<dyn Error>> {
    let mut out = BufWriter::new(io::stdout().lock());
    match args {
        ["init", dir] => {
            Store::open_chroot(dir)?;
        }
        ["register", dir, n] => {
            let n = count(n)?;
            let store = Store::open_chroot(dir)?;
            let mut batch = store.batch();
            for i in 0..n {
                batch.add_text(
                    &shapes::name(REGISTER, i),
                    &shapes::contents(i),
                    &Default::default(),
                )?;
            }
            let added = batch.commit()?;
            writeln!(out, "registered {} paths", added.len())?;
        }
        ["add-files", dir, src] => {
            let store = Store::open_chroot(dir)?;
            let mut files: Vec<PathBuf> = fs::read_dir(src)
                .map_err(|e| format!("cannot read `{src}`: {e}"))?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            files.sort();
            let mut batch = store.batch();
            for f in &files {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                batch.add_path(name, f, &|_| true)?;
            }
            let added = batch.commit()?;
            writeln!(out, "added {} paths", added.len())?;
        }
        ["populate-graph", dir, n] => {
            let store = Store::open_chroot(dir)?;
            let paths = shapes::populate(&store, Shape::Graph, GRAPH, count(n)?)?;
            let top = paths.last().ok_or("an empty graph has no top path")?;
            writeln!(out, "{}", store.store_dir().display(top))?;
        }
        ["closure", dir, path] => {
            let store = Store::open_chroot(dir)?;
            let root = store.parse_user_path(path)?;
            for p in store.closure(&[root])? {
                writeln!(out, "{}", store.store_dir().display(&p))?;
            }
        }
        ["populate-garbage", dir, n, shape] => {
            let (shape, prefix) = garbage_shape(shape)?;
            let store = Store::open_chroot(dir)?;
            let paths = shapes::populate(&store, shape, prefix, count(n)?)?;
            writeln!(out, "added {} unrooted paths", paths.len())?;
        }
        ["gc", dir] => {
            let store = Store::open_chroot(dir)?;
            let report = store.collect_garbage(&GcOptions::default())?;
            writeln!(
                out,
                "deleted {} paths, {} bytes freed",
                report.deleted.len(),
                report.freed_bytes
            )?;
        }
        ["write-files", dir, n] => {
            shapes::write_files(Path::new(dir), REGISTER, count(n)?)?;
        }
        ["nix-dump", set, n, dump, root @ ..] => {
            let (shape, prefix, files) = match (*set, root) {
                ("register", []) => (Shape::Flat, REGISTER, None),
                ("graph", []) => (Shape::Graph, GRAPH, None),
                ("garbage-graph" | "garbage-flat", [root]) => {
                    let (shape, prefix) = garbage_shape(&set["garbage-".len()..])?;
                    (shape, prefix, Some(Path::new(root)))
                }
                _ => return Err(USAGE.into()),
            };
            let n = count(n)?;
            if n == 0 {
                return Err("a dump needs at least one path".into());
            }
            let mut w = BufWriter::new(
                fs::File::create(dump).map_err(|e| format!("cannot create `{dump}`: {e}"))?,
            );
            shapes::write_nix_dump(&mut w, shape, prefix, n, files)?;
            writeln!(out, "{}", shapes::nix_path(prefix, n - 1))?;
        }
        _ => return Err(USAGE.into()),
    }
    out.flush()?;
    Ok(())
}
