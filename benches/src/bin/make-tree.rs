//! `make-tree DIR`: creates the NAR-hashing benchmark tree (20,000 files of
//! 1 KiB and 8 files of 64 MiB) at DIR, for the side-by-side script.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: make-tree DIR");
        return ExitCode::FAILURE;
    };
    match bigtop_benches::make_tree(&dir, bigtop_benches::TreeShape::ISSUE) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot create the tree at `{}`: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
