//! Running the examples from tests: `cargo test` builds them beside the
//! test binaries.

use std::error::Error;
use std::path::{Path, PathBuf};

/// The built example `name`, or an error saying how to build it.
pub fn example(name: &str) -> Result<PathBuf, Box<dyn Error>> {
    let exe = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .ok_or("no target dir")?
        .join("examples")
        .join(name);
    if !exe.is_file() {
        return Err(format!(
            "`{}` is missing: run the whole test suite (`cargo test -p bigtop` builds the examples)",
            exe.display()
        )
        .into());
    }
    Ok(exe)
}

/// Runs the example `exe` with `args`: its standard output, or an error
/// with both outputs when it fails.
pub fn run(exe: &Path, args: &[&Path]) -> Result<String, Box<dyn Error>> {
    let out = std::process::Command::new(exe).args(args).output()?;
    let stdout = String::from_utf8(out.stdout)?;
    if !out.status.success() {
        return Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(stdout)
}
