//! A binary cache over HTTP(S): `GET` and `HEAD` to read, `PUT` to write
//! (what nginx's WebDAV module and most object stores accept).

use std::io::{self, Read, Seek};
use std::time::Duration;

use super::{checked_name, BinaryCache, CacheError, Contents};

/// A binary cache at an `http://` or `https://` URL.
#[derive(Debug, Clone)]
pub struct HttpCache {
    base: String,
    agent: ureq::Agent,
}

/// How often a request that failed for a reason worth retrying (a
/// connection refused or dropped, a 5xx, a 429) is tried in all.
const TRIES: u32 = 3;

fn agent(stall: Duration) -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            // Statuses are answers here (404: the cache lacks it).
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A server that stops sending mid-NAR fails the read
            // (and the fetch is retried or another source used) rather
            // than hanging a build forever; a whole body may take as
            // long as it needs.
            .timeout_per_read(Some(stall))
            .timeout_per_write(Some(stall))
            // A cache may send readers elsewhere (a CDN); never more
            // than a few hops.
            .max_redirects(4)
            .user_agent(concat!("bigtop/", env!("CARGO_PKG_VERSION")))
            .build(),
    )
}

/// How long a connection may stay silent before it counts as dropped.
const STALL: Duration = Duration::from_secs(30);

impl HttpCache {
    /// The cache at `url` (`http://host[:port]/path`); connections are
    /// kept alive and reused.
    pub fn new(url: &str) -> Result<HttpCache, CacheError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(CacheError::Bad {
                cache: url.to_owned(),
                reason: "not an `http://` or `https://` URL".into(),
            });
        }
        let base = url
            .split('?')
            .next()
            .unwrap_or(url)
            .trim_end_matches('/')
            .to_owned();
        Ok(HttpCache {
            base,
            agent: agent(STALL),
        })
    }

    /// The same cache, counting a connection silent for `stall` as
    /// dropped (30 seconds unless set).
    pub fn stall_after(mut self, stall: Duration) -> HttpCache {
        self.agent = agent(stall);
        self
    }

    fn url(&self, name: &str) -> Result<String, CacheError> {
        checked_name(name)
            .map(|n| format!("{}/{n}", self.base))
            .ok_or_else(|| CacheError::Bad {
                cache: self.describe(),
                reason: format!("`{name}` is not a file name inside the cache"),
            })
    }

    fn failed(&self, action: &'static str, name: &str, why: String) -> CacheError {
        CacheError::Io {
            cache: self.describe(),
            action,
            file: name.to_owned(),
            source: io::Error::other(why),
        }
    }

    /// `request` tried up to [`TRIES`] times, waiting longer each time,
    /// while it fails for a reason another try may not meet.
    fn retrying<T>(
        &self,
        action: &'static str,
        name: &str,
        mut request: impl FnMut() -> Result<ureq::http::Response<T>, ureq::Error>,
    ) -> Result<ureq::http::Response<T>, CacheError> {
        let mut wait = Duration::from_millis(200);
        for attempt in 1..=TRIES {
            let retry = match request() {
                Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                    format!("HTTP status {}", r.status())
                }
                Ok(r) => return Ok(r),
                Err(
                    e @ (ureq::Error::Io(_)
                    | ureq::Error::Timeout(_)
                    | ureq::Error::ConnectionFailed),
                ) => e.to_string(),
                Err(e) => return Err(self.failed(action, name, e.to_string())),
            };
            if attempt == TRIES {
                return Err(self.failed(action, name, format!("{retry} ({TRIES} tries)")));
            }
            std::thread::sleep(wait);
            wait *= 2;
        }
        unreachable!("the last try returns")
    }
}

impl BinaryCache for HttpCache {
    fn describe(&self) -> String {
        without_userinfo(&self.base)
    }

    fn get(&self, name: &str) -> Result<Option<Box<dyn Read + Send>>, CacheError> {
        let url = self.url(name)?;
        let r = self.retrying("get", name, || self.agent.get(&url).call())?;
        match r.status().as_u16() {
            200 => Ok(Some(Box::new(r.into_body().into_reader()))),
            404 | 403 | 410 => Ok(None),
            s => Err(self.failed("get", name, format!("HTTP status {s}"))),
        }
    }

    fn has(&self, name: &str) -> Result<bool, CacheError> {
        let url = self.url(name)?;
        let r = self.retrying("look for", name, || self.agent.head(&url).call())?;
        match r.status().as_u16() {
            200 => Ok(true),
            404 | 403 | 410 => Ok(false),
            s => Err(self.failed("look for", name, format!("HTTP status {s}"))),
        }
    }

    fn put(&self, name: &str, data: Contents<'_>) -> Result<(), CacheError> {
        let url = self.url(name)?;
        let r = self.retrying("put", name, || {
            // Never redirected: a redirect turns a PUT into a GET, whose
            // success would be taken for an upload.
            let request = self.agent.put(&url).config().max_redirects(0).build();
            match data {
                Contents::Bytes(b) => request.send(b),
                // From its start on every try; sent with its length.
                Contents::File(mut f) => {
                    f.rewind().map_err(ureq::Error::Io)?;
                    request.send(f)
                }
            }
        })?;
        if r.status().is_success() {
            Ok(())
        } else if r.status().is_redirection() {
            let to = r
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .unwrap_or("?");
            Err(self.failed(
                "put",
                name,
                format!(
                    "redirected ({}) to `{to}`: uploads are not redirected",
                    r.status()
                ),
            ))
        } else {
            Err(self.failed("put", name, format!("HTTP status {}", r.status())))
        }
    }
}

/// `url` without a `user:password@` before its host: what messages, reports
/// and the memo of misses show, so that they do not spread a password.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_password_in_a_cache_url_is_never_shown() {
        for (url, shown) in [
            (
                "https://u:p@cache.example.org/x",
                "https://cache.example.org/x",
            ),
            (
                "http://cache.example.org:8080",
                "http://cache.example.org:8080",
            ),
            ("http://h/a@b", "http://h/a@b"),
            ("https://u@h", "https://h"),
        ] {
            assert_eq!(super::without_userinfo(url), shown);
        }
    }
}
