//! Host programs made visible inside: `/bin/sh` and, for any host
//! program, its dynamic loader and shared libraries, found through the
//! ELF header and the loader's `--list`.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{prep_err, SandboxError};

/// `/bin/sh` of the host, with its dynamic loader and the shared libraries
/// it needs, as `(host path, path inside)` pairs for
/// [`SandboxSpec::extra_paths`](super::SandboxSpec::extra_paths): enough
/// for a host shell to run inside.
pub fn default_extra_paths() -> Result<Vec<(PathBuf, PathBuf)>, SandboxError> {
    let sh = Path::new("/bin/sh");
    let host = fs::canonicalize(sh).map_err(prep_err("resolve", sh))?;
    let mut paths = vec![(host, sh.to_owned())];
    paths.extend(libraries_of(sh)?);
    Ok(paths)
}

/// The dynamic loader and shared libraries a host program needs, as
/// `(host path, path inside)` pairs (the inside path is the one the loader
/// asks for). Empty for a static program. The loader named in the ELF
/// header (`PT_INTERP`) is asked with `--list`.
pub fn libraries_of(program: &Path) -> Result<Vec<(PathBuf, PathBuf)>, SandboxError> {
    let lib_err = |reason: String| SandboxError::Libraries {
        path: program.to_owned(),
        reason,
    };
    let elf = fs::read(program).map_err(prep_err("read", program))?;
    let Some(interp) = elf_interpreter(&elf).map_err(|r| lib_err(r.to_owned()))? else {
        return Ok(Vec::new());
    };
    let out = std::process::Command::new(&interp)
        .arg("--list")
        .arg(program)
        .env_clear()
        .output()
        .map_err(|e| lib_err(format!("cannot run `{}`: {e}", interp.display())))?;
    if !out.status.success() {
        return Err(lib_err(format!(
            "`{} --list` failed ({}): {}",
            interp.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut inside: Vec<PathBuf> = vec![interp];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `libc.so.6 => /lib/…/libc.so.6 (0x…)`, `/lib64/ld-….so.2 (0x…)`,
        // or `linux-vdso.so.1 (0x…)`, which is no file.
        let target = line.split("=>").last().unwrap_or("").trim();
        if target.starts_with("not found") {
            return Err(lib_err(format!("the loader says: {}", line.trim())));
        }
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') && !inside.iter().any(|p| p == Path::new(path)) {
            inside.push(PathBuf::from(path));
        }
    }
    inside
        .into_iter()
        .map(|p| {
            let host = fs::canonicalize(&p).map_err(prep_err("resolve", &p))?;
            Ok((host, p))
        })
        .collect()
}

/// The `PT_INTERP` of an ELF file, if it has one.
fn elf_interpreter(elf: &[u8]) -> Result<Option<PathBuf>, &'static str> {
    if elf.len() < 0x40 || &elf[..4] != b"\x7fELF" {
        return Err("not an ELF file");
    }
    let wide = match elf[4] {
        1 => false,
        2 => true,
        _ => return Err("unknown ELF class"),
    };
    let little = match elf[5] {
        1 => true,
        2 => false,
        _ => return Err("unknown ELF byte order"),
    };
    let num = |at: usize, len: usize| -> Option<u64> {
        let bytes = elf.get(at..at.checked_add(len)?)?;
        let mut v = 0u64;
        for i in 0..len {
            let b = if little { bytes[len - 1 - i] } else { bytes[i] };
            v = (v << 8) | u64::from(b);
        }
        Some(v)
    };
    let truncated = "truncated ELF header";
    let (phoff, phentsize, phnum) = if wide {
        (num(0x20, 8), num(0x36, 2), num(0x38, 2))
    } else {
        (num(0x1c, 4), num(0x2a, 2), num(0x2c, 2))
    };
    let (phoff, phentsize, phnum) = (
        phoff.ok_or(truncated)? as usize,
        phentsize.ok_or(truncated)? as usize,
        phnum.ok_or(truncated)? as usize,
    );
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        const PT_INTERP: u64 = 3;
        if num(ph, 4).ok_or(truncated)? != PT_INTERP {
            continue;
        }
        let (offset, size) = if wide {
            (num(ph + 8, 8), num(ph + 32, 8))
        } else {
            (num(ph + 4, 4), num(ph + 16, 4))
        };
        let (offset, size) = (
            offset.ok_or(truncated)? as usize,
            size.ok_or(truncated)? as usize,
        );
        let bytes = elf
            .get(offset..offset.saturating_add(size))
            .ok_or("PT_INTERP beyond the end of the file")?;
        let bytes = bytes.split(|b| *b == 0).next().unwrap_or(bytes);
        return Ok(Some(PathBuf::from(std::ffi::OsStr::from_bytes(bytes))));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_interpreter_of_the_running_test() {
        let exe = fs::read(std::env::current_exe().unwrap()).unwrap();
        let interp = elf_interpreter(&exe).unwrap();
        // Test binaries are dynamically linked on the platforms CI runs.
        assert!(interp.is_some_and(|p| p.is_absolute()));
    }

    #[test]
    fn rejects_what_is_not_elf() {
        assert_eq!(elf_interpreter(b"#!/bin/sh\n"), Err("not an ELF file"));
    }
}
