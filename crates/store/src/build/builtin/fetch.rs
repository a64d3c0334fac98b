//! `builtin:fetchurl`: the output of a fixed-output derivation fetched
//! from a `file://`, `http://` or `https://` URL, in-process.
//!
//! Only fixed-output derivations may fetch: their hash is checked after
//! the download (by the same code that checks a builder process's fixed
//! output), so what a URL serves cannot change what a derivation means.
//! A download is retried on errors that are usually transient (a reset
//! connection, a timeout, a 5xx or 429 answer), then the next mirror is
//! tried; a 404 moves on at once.

use std::fs;
use std::io::{self, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bigtop_core::derivation::Derivation;

use super::BuiltinError;

pub use bigtop_core::derivation::builtins::FETCH_URL;

/// Attempts per URL for transient failures.
const ATTEMPTS: u32 = 3;

/// Fetches the file `d` names into `out` (which must not exist); `note`
/// receives lines for the build log.
pub(crate) fn fetch(
    d: &Derivation,
    out: &Path,
    note: &mut dyn FnMut(&str),
) -> Result<(), BuiltinError> {
    if !d.is_fixed_output() {
        // Without an expected hash a download would be an impurity that
        // nothing checks.
        return Err(BuiltinError::NotFixedOutput(FETCH_URL));
    }
    let urls: Vec<&str> = match (d.env.get("urls"), d.env.get("url")) {
        (Some(urls), _) => urls.split_whitespace().collect(),
        (None, Some(url)) => vec![url.as_str()],
        (None, None) => {
            return Err(BuiltinError::MissingVar {
                builtin: FETCH_URL,
                var: "url",
            })
        }
    };
    if urls.is_empty() {
        return Err(BuiltinError::MissingVar {
            builtin: FETCH_URL,
            var: "url",
        });
    }
    let executable = d.env.get("executable").is_some_and(|v| v == "1");
    let unpack = d.env.get("unpack").is_some_and(|v| v == "1");
    let mut file = if unpack {
        // A tarball is unpacked into `out`: the download itself gets no
        // name in the store (an unnamed file beside it, gone when closed).
        let dir = out.parent().unwrap_or(Path::new("/"));
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(dir)
    } else {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(if executable { 0o555 } else { 0o444 })
            .open(out)
    }
    .map_err(|source| BuiltinError::Io {
        action: "create",
        path: out.to_owned(),
        source,
    })?;
    let mut errors: Vec<(String, String)> = Vec::new();
    for url in urls {
        for attempt in 1..=ATTEMPTS {
            note(&format!("bigtop: fetching {url}"));
            let result = rewind(&mut file).and_then(|()| fetch_one(url, &mut file));
            match result {
                Ok(n) => {
                    note(&format!("bigtop: fetched {n} bytes from {url}"));
                    if unpack {
                        return unpack_tarball(&mut file, out, note).map_err(|reason| {
                            BuiltinError::Unpack {
                                url: url.to_owned(),
                                reason,
                            }
                        });
                    }
                    return file.sync_all().map_err(|source| BuiltinError::Io {
                        action: "write",
                        path: out.to_owned(),
                        source,
                    });
                }
                Err(e) => {
                    note(&format!("bigtop: {url}: {}", e.message));
                    if !e.transient || attempt == ATTEMPTS {
                        errors.push((url.to_owned(), e.message));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                }
            }
        }
    }
    Err(BuiltinError::Fetch(errors))
}

/// Unpacks the tar (or gzip-compressed tar) in `file` into the new
/// directory `out`; a tarball holding one directory gives that
/// directory's contents, as Nix's `fetchTarball` does. Entries that
/// would land outside `out` are refused by the unpacker.
fn unpack_tarball(
    file: &mut fs::File,
    out: &Path,
    note: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let at =
        |what: &str, path: &Path, e: io::Error| format!("cannot {what} `{}`: {e}", path.display());
    file.rewind().map_err(|e| at("read", out, e))?;
    let mut magic = [0u8; 2];
    let gzip = io::Read::read_exact(file, &mut magic).is_ok() && magic == [0x1f, 0x8b];
    file.rewind().map_err(|e| at("read", out, e))?;
    fs::create_dir(out).map_err(|e| at("create", out, e))?;
    let reader: Box<dyn io::Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(
            &*file,
        )))
    } else {
        Box::new(io::BufReader::new(&*file))
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(false);
    archive
        .unpack(out)
        .map_err(|e| format!("not a tarball, or a broken one: {e}"))?;
    let entries: Vec<PathBuf> = fs::read_dir(out)
        .and_then(|d| d.map(|e| e.map(|e| e.path())).collect())
        .map_err(|e| at("read", out, e))?;
    if let [only] = entries.as_slice() {
        if fs::symlink_metadata(only)
            .map_err(|e| at("read", only, e))?
            .is_dir()
        {
            // Its children move up; first out of the way of a child of
            // the same name.
            let mut aside = out.join(".bigtop-top");
            while aside.exists() || only.join(aside.file_name().unwrap_or_default()).exists() {
                aside.as_mut_os_string().push("_");
            }
            fs::rename(only, &aside).map_err(|e| at("rename", only, e))?;
            for child in fs::read_dir(&aside).map_err(|e| at("read", &aside, e))? {
                let child = child.map_err(|e| at("read", &aside, e))?;
                let to = out.join(child.file_name());
                fs::rename(child.path(), &to).map_err(|e| at("rename", &to, e))?;
            }
            fs::remove_dir(&aside).map_err(|e| at("remove", &aside, e))?;
        }
    }
    note("bigtop: unpacked");
    Ok(())
}

fn rewind(file: &mut fs::File) -> Result<(), FetchError> {
    file.set_len(0)
        .and_then(|()| file.rewind())
        .map_err(|e| FetchError::fatal(format!("cannot reset the output: {e}")))
}

/// Why one attempt failed, and whether another might succeed.
struct FetchError {
    message: String,
    transient: bool,
}

impl FetchError {
    fn fatal(message: String) -> Self {
        FetchError {
            message,
            transient: false,
        }
    }
}

/// One attempt at `url`; returns the bytes written.
fn fetch_one(url: &str, file: &mut fs::File) -> Result<u64, FetchError> {
    if let Some(rest) = url.strip_prefix("file://") {
        let path = file_url_path(rest).ok_or_else(|| {
            FetchError::fatal("a file URL needs an absolute path (file:///…)".into())
        })?;
        let mut src = fs::File::open(&path)
            .map_err(|e| FetchError::fatal(format!("cannot open `{}`: {e}", path.display())))?;
        let meta = src
            .metadata()
            .map_err(|e| FetchError::fatal(format!("cannot read `{}`: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(FetchError::fatal(format!(
                "`{}` is not a regular file",
                path.display()
            )));
        }
        return io::copy(&mut src, file)
            .map_err(|e| FetchError::fatal(format!("cannot copy `{}`: {e}", path.display())));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(FetchError::fatal(
            "unsupported URL scheme (file://, http:// and https:// are)".into(),
        ));
    }
    let response = agent().get(url).call().map_err(http_error)?;
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let got = match io::Read::read(&mut body, &mut buf) {
            Ok(0) => break,
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A connection lost mid-body is worth another attempt.
            Err(e) => {
                return Err(FetchError {
                    message: format!("reading the body after {n} bytes: {e}"),
                    transient: true,
                })
            }
        };
        file.write_all(&buf[..got])
            .map_err(|e| FetchError::fatal(format!("cannot write the output: {e}")))?;
        n += got as u64;
    }
    Ok(n)
}

fn http_error(e: ureq::Error) -> FetchError {
    let transient = match &e {
        ureq::Error::StatusCode(code) => *code >= 500 || *code == 429 || *code == 408,
        ureq::Error::Io(_) | ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed => true,
        _ => false,
    };
    let message = match &e {
        ureq::Error::StatusCode(code) => format!("HTTP status {code}"),
        other => other.to_string(),
    };
    FetchError { message, transient }
}

/// One agent per process, so that fetches from one host reuse
/// connections.
fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_connect(Some(Duration::from_secs(30)))
                .timeout_recv_response(Some(Duration::from_secs(60)))
                .user_agent(concat!("bigtop/", env!("CARGO_PKG_VERSION")))
                .build(),
        )
    })
}

/// The path of a `file://` URL (after the scheme): `/abs/path` or
/// `localhost/abs/path`, percent-decoded.
fn file_url_path(rest: &str) -> Option<PathBuf> {
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    if !path.starts_with('/') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(std::ffi::OsString::from_vec(decoded)))
}

#[cfg(test)]
mod tests {
    use super::file_url_path;
    use std::path::PathBuf;

    #[test]
    fn file_urls_are_absolute_and_percent_decoded() {
        assert_eq!(file_url_path("/a%20b/c"), Some(PathBuf::from("/a b/c")));
        assert_eq!(file_url_path("localhost/x"), Some(PathBuf::from("/x")));
        assert_eq!(file_url_path("relative/x"), None);
        assert_eq!(file_url_path("/bad%zz"), None);
        assert_eq!(file_url_path("/cut%2"), Some(PathBuf::from("/cut%2")));
    }
}
