//! Remembering which paths a cache lacks, for a while.
//!
//! A fleet is built again and again against the same caches, and most of
//! what a new release builds is in no cache yet: without a memory each run
//! asks every cache for every such path again, a round trip each. A
//! [`NarinfoMemo`] keeps the misses (cache, path, when) in a small SQLite
//! file shared by every process of the user, and answers "still missing"
//! for as long as its time to live, as Nix's `narinfo-cache-negative-ttl`
//! does. Only misses are kept: a path found is always looked up again, so
//! its signature is checked against the keys trusted today.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bigtop_core::StorePath;
use rusqlite::Connection;

use super::CacheError;

/// Misses of caches, remembered for a time to live.
pub struct NarinfoMemo {
    file: PathBuf,
    conn: Mutex<Connection>,
    ttl: Duration,
}

impl std::fmt::Debug for NarinfoMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NarinfoMemo")
            .field("file", &self.file)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl NarinfoMemo {
    /// The memo kept in `file` (created with its folder if missing);
    /// misses older than `ttl` are forgotten.
    pub fn open(file: impl Into<PathBuf>, ttl: Duration) -> Result<NarinfoMemo, CacheError> {
        let file = file.into();
        let err = |action: &'static str, e: rusqlite::Error| CacheError::Io {
            cache: "the memo of misses".into(),
            action,
            file: file.display().to_string(),
            source: std::io::Error::other(e),
        };
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|source| CacheError::Io {
                cache: "the memo of misses".into(),
                action: "create the folder of",
                file: file.display().to_string(),
                source,
            })?;
        }
        let conn = Connection::open(&file).map_err(|e| err("open", e))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| err("open", e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS Missing (
                 cache  TEXT NOT NULL,
                 digest TEXT NOT NULL,
                 time   INTEGER NOT NULL,
                 PRIMARY KEY (cache, digest)
             ) WITHOUT ROWID;",
        )
        .map_err(|e| err("set up", e))?;
        Ok(NarinfoMemo {
            file,
            conn: Mutex::new(conn),
            ttl,
        })
    }

    /// Its file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Which of `paths` `cache` was found to lack less than the time to
    /// live ago. A memo that cannot be read remembers nothing: it only
    /// saves round trips.
    pub fn missing<'a>(
        &self,
        cache: &str,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Vec<&'a StorePath> {
        let since = now().saturating_sub(self.ttl.as_secs());
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(mut query) =
            conn.prepare_cached("SELECT time FROM Missing WHERE cache = ?1 AND digest = ?2")
        else {
            return Vec::new();
        };
        paths
            .into_iter()
            .filter(|p| {
                let time: Option<u64> = query
                    .query_row((cache, p.digest().to_string()), |r| r.get(0))
                    .ok();
                time.is_some_and(|t| t >= since && self.ttl > Duration::ZERO)
            })
            .collect()
    }

    /// Records that `cache` lacks `paths`, now; and forgets the ones it
    /// was found to have (a path uploaded since).
    pub fn record(
        &self,
        cache: &str,
        missing: &[&StorePath],
        found: &[&StorePath],
    ) -> Result<(), CacheError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let err = |e: rusqlite::Error| CacheError::Io {
            cache: cache.to_owned(),
            action: "remember misses in",
            file: self.file.display().to_string(),
            source: std::io::Error::other(e),
        };
        let tx = conn.transaction().map_err(err)?;
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO Missing (cache, digest, time) VALUES (?1, ?2, ?3)",
                )
                .map_err(err)?;
            let time = now();
            for p in missing {
                put.execute((cache, p.digest().to_string(), time))
                    .map_err(err)?;
            }
            let mut forget = tx
                .prepare_cached("DELETE FROM Missing WHERE cache = ?1 AND digest = ?2")
                .map_err(err)?;
            for p in found {
                forget
                    .execute((cache, p.digest().to_string()))
                    .map_err(err)?;
            }
            // Old misses are of no use to anyone: the file stays small.
            tx.execute(
                "DELETE FROM Missing WHERE time < ?1",
                [now().saturating_sub(self.ttl.as_secs().max(86_400))],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
