//! The metadata database: schema, migrations and connection settings.
//!
//! One SQLite file (`<state>/db/db.sqlite`) in WAL mode, so that readers
//! in any process never block writers. Foreign keys hold the store's
//! central invariant: a reference always points at a registered path, so a
//! registered path can never refer to one that is gone. The schema's
//! version is SQLite's `user_version`; opening a database newer than this
//! build knows fails instead of guessing.
//!
//! | table | holds |
//! |---|---|
//! | `ValidPaths` | every registered path with its NAR hash and size, deriver, registration time, signatures, content address |
//! | `Refs` | reference edges (referrer → reference), indexed both ways |
//! | `Unreferenced` | registered paths that no other path refers to, kept by triggers: where garbage collection starts, so it never walks the live store |
//! | `DerivationOutputs` | for a `.drv`, the path of each output |
//! | `Processes`, `TempRoots` | open store handles (the `liveness` module) and the paths they hold alive while they run |
//! | `Counters` | the last handle id given out, so that ids are never reused |
//! | `Locks` | per-path locks of adders, builders and the collector (the `lock` module) |
//! | `Roots` | the roots made through the API (link → path), so that the collector's check of a path and a root made meanwhile are ordered by the database |
//! | `Config` | one row: the logical store dir the database describes |
//!
//! A database describes the paths of one logical store dir: a path's
//! record means "its files are at `<root>/<base name>`". Two store dirs
//! can meet at one state dir (`/bigtop/store` and `/bigtop/other` under
//! one chroot base both keep state in `<base>/bigtop/var`), and each would
//! then take the other's paths for missing and "repair" them away; so the
//! database records its store dir and refuses to open for another.

use std::path::Path;
use std::time::Duration;

use bigtop_core::StoreDir;
use rusqlite::{Connection, OptionalExtension};

use crate::error::Error;

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 4;

/// `MIGRATIONS[v]` takes a database from version `v` to `v + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 → 1: the first schema.
    r#"
    CREATE TABLE ValidPaths (
        id                INTEGER PRIMARY KEY,
        path              TEXT NOT NULL UNIQUE,
        nar_hash          TEXT NOT NULL,
        nar_size          INTEGER NOT NULL,
        deriver           TEXT,
        registration_time INTEGER NOT NULL,
        signatures        TEXT NOT NULL DEFAULT '',
        ca                TEXT
    );
    CREATE TABLE Refs (
        referrer  INTEGER NOT NULL REFERENCES ValidPaths(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
        reference INTEGER NOT NULL REFERENCES ValidPaths(id) ON DELETE RESTRICT DEFERRABLE INITIALLY DEFERRED,
        PRIMARY KEY (referrer, reference)
    ) WITHOUT ROWID;
    CREATE INDEX RefsByReference ON Refs(reference, referrer);
    CREATE TABLE Unreferenced (id INTEGER PRIMARY KEY);
    CREATE TRIGGER PathRegistered AFTER INSERT ON ValidPaths BEGIN
        INSERT OR IGNORE INTO Unreferenced VALUES (new.id);
    END;
    CREATE TRIGGER PathUnregistered AFTER DELETE ON ValidPaths BEGIN
        DELETE FROM Unreferenced WHERE id = old.id;
    END;
    CREATE TRIGGER ReferenceAdded AFTER INSERT ON Refs WHEN new.referrer != new.reference BEGIN
        DELETE FROM Unreferenced WHERE id = new.reference;
    END;
    CREATE TRIGGER ReferenceRemoved AFTER DELETE ON Refs
        WHEN old.referrer != old.reference
         AND NOT EXISTS (SELECT 1 FROM Refs WHERE reference = old.reference AND referrer != old.reference)
         AND EXISTS (SELECT 1 FROM ValidPaths WHERE id = old.reference)
    BEGIN
        INSERT OR IGNORE INTO Unreferenced VALUES (old.reference);
    END;
    CREATE TABLE DerivationOutputs (
        drv    INTEGER NOT NULL REFERENCES ValidPaths(id) ON DELETE CASCADE,
        output TEXT NOT NULL,
        path   TEXT NOT NULL,
        PRIMARY KEY (drv, output)
    );
    CREATE INDEX DerivationOutputsByPath ON DerivationOutputs(path);
    CREATE TABLE Processes (
        id         INTEGER PRIMARY KEY,
        pid        INTEGER NOT NULL,
        start_time INTEGER NOT NULL
    );
    CREATE TABLE TempRoots (
        process INTEGER NOT NULL REFERENCES Processes(id) ON DELETE CASCADE,
        path    TEXT NOT NULL,
        PRIMARY KEY (path, process)
    ) WITHOUT ROWID;
    CREATE INDEX TempRootsByProcess ON TempRoots(process);
    CREATE TABLE Roots (
        link TEXT PRIMARY KEY,
        path TEXT NOT NULL
    );
    CREATE INDEX RootsByPath ON Roots(path);
    CREATE TABLE Locks (
        path    TEXT PRIMARY KEY,
        process INTEGER NOT NULL REFERENCES Processes(id) ON DELETE CASCADE,
        owner   INTEGER NOT NULL
    );
    CREATE INDEX LocksByOwner ON Locks(owner);
    CREATE INDEX LocksByProcess ON Locks(process);
    "#,
    // 1 → 2: a lock is one row of one B-tree, not four (rowid, key and
    // two indexes): a batch takes and releases a lock per path, and the
    // table only ever holds the locks in flight, so a release by owner or
    // a process's cascade scans a small table instead of an index.
    r#"
    CREATE TABLE LocksNew (
        path    TEXT PRIMARY KEY,
        process INTEGER NOT NULL REFERENCES Processes(id) ON DELETE CASCADE,
        owner   INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO LocksNew (path, process, owner) SELECT path, process, owner FROM Locks;
    DROP TABLE Locks;
    ALTER TABLE LocksNew RENAME TO Locks;
    "#,
    // 2 → 3: a handle is alive while it holds a lock on a file named by
    // its id (the `liveness` module), not while a pid runs: ids must never be
    // reused, or a new handle would inherit a dead one's leftovers.
    r#"
    CREATE TABLE Counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO Counters VALUES ('process', COALESCE((SELECT MAX(id) FROM Processes), 0));
    "#,
    // 3 → 4: the store dir the database belongs to. Its row is written
    // by `open`, which knows the dir: for a database made before this
    // version, the dir it is first opened with after the upgrade.
    r#"
    CREATE TABLE Config (
        id        INTEGER PRIMARY KEY CHECK (id = 1),
        store_dir TEXT NOT NULL
    );
    "#,
];

/// Opens (creating or migrating) the database at `file` for the store
/// dir `dir`; fails if it belongs to another store dir.
pub(crate) fn open(file: &Path, dir: &StoreDir) -> Result<Connection, Error> {
    let err = |source| Error::Db {
        path: file.to_owned(),
        source,
    };
    let conn = Connection::open(file).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(600)).map_err(err)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -65536;",
    )
    .map_err(err)?;
    migrate(&conn, file, dir)?;
    check_store_dir(&conn, file, dir)?;
    Ok(conn)
}

fn recorded_store_dir(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT store_dir FROM Config WHERE id = 1", [], |r| {
        r.get(0)
    })
    .optional()
}

/// Claims the database for `dir` if no store dir is recorded yet (the
/// first writer wins), inside the caller's transaction or on its own.
fn claim(conn: &Connection, dir: &StoreDir) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO Config (id, store_dir) VALUES (1, ?1)",
        [dir.as_str()],
    )
    .map(|_| ())
}

fn check_store_dir(conn: &Connection, file: &Path, dir: &StoreDir) -> Result<(), Error> {
    let err = |source| Error::Db {
        path: file.to_owned(),
        source,
    };
    let recorded = match recorded_store_dir(conn).map_err(err)? {
        Some(d) => d,
        // Only a row deleted by hand gets here: the migration writes it.
        None => {
            claim(conn, dir).map_err(err)?;
            recorded_store_dir(conn)
                .map_err(err)?
                .unwrap_or_else(|| dir.as_str().to_owned())
        }
    };
    if recorded != dir.as_str() {
        return Err(Error::StoreDirMismatch {
            database: file.to_owned(),
            recorded,
            opened: dir.as_str().to_owned(),
        });
    }
    Ok(())
}

fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

fn migrate(conn: &Connection, file: &Path, dir: &StoreDir) -> Result<(), Error> {
    let err = |source| Error::Db {
        path: file.to_owned(),
        source,
    };
    let found = version(conn).map_err(err)?;
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            path: file.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    // Another process may be migrating: take the write lock, then look again.
    conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
    let result = (|| {
        let mut v = version(conn)?;
        while v < SCHEMA_VERSION {
            conn.execute_batch(MIGRATIONS[v as usize])?;
            v += 1;
            conn.execute_batch(&format!("PRAGMA user_version = {v}"))?;
        }
        // In the transaction that made the table: no other process can
        // see it empty and claim it for its own dir.
        claim(conn, dir)?;
        conn.execute_batch("COMMIT")
    })();
    if result.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    result.map_err(err)
}

/// Seconds since the epoch, the form in which the database records
/// times (a path's registration).
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A JSON array of strings, the form in which a whole set of names goes
/// to SQLite as one parameter (read back with `json_each`): one statement
/// for a batch instead of one per row.
pub(crate) fn json_array<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let items: Vec<S> = items.into_iter().collect();
    let texts: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    // Serializing strings cannot fail: only maps with non-string keys and
    // failing `Serialize` impls do.
    serde_json::to_string(&texts).expect("a list of strings serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database as the first release wrote it, with a lock in flight,
    /// reaches the current schema keeping its rows.
    #[test]
    fn a_version_1_database_migrates_keeping_its_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("db.sqlite");
        {
            let conn = Connection::open(&file).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(
                "PRAGMA user_version = 1;
                 INSERT INTO Processes (id, pid, start_time) VALUES (7, 1234, 5);
                 INSERT INTO Locks (path, process, owner) VALUES ('a-x', 7, 42);",
            )
            .unwrap();
        }
        let conn = open(&file, &StoreDir::default()).unwrap();
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
        let lock: (String, i64, i64) = conn
            .query_row("SELECT path, process, owner FROM Locks", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(lock, ("a-x".to_owned(), 7, 42));
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE name = 'Locks'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(sql.contains("WITHOUT ROWID"), "{sql}");
        // The process's locks still go with it.
        conn.execute("DELETE FROM Processes WHERE id = 7", [])
            .unwrap();
        let left: i64 = conn
            .query_row("SELECT count(*) FROM Locks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    /// A database made before it recorded its store dir belongs to the
    /// first dir it is opened with after the upgrade, and to no other.
    #[test]
    fn a_version_2_database_records_the_store_dir_it_is_opened_with() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("db.sqlite");
        {
            let conn = Connection::open(&file).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(MIGRATIONS[1]).unwrap();
            conn.execute_batch("PRAGMA user_version = 2").unwrap();
        }
        let other = StoreDir::new("/srv/store").unwrap();
        let conn = open(&file, &other).unwrap();
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
        assert_eq!(
            recorded_store_dir(&conn).unwrap().as_deref(),
            Some("/srv/store")
        );
        drop(conn);
        drop(open(&file, &other).unwrap());
        let err = open(&file, &StoreDir::default()).unwrap_err();
        assert!(
            matches!(&err, Error::StoreDirMismatch { recorded, opened, .. }
                if recorded == "/srv/store" && opened == "/bigtop/store"),
            "{err}"
        );
    }

    /// What goes to SQLite as a JSON array comes back from `json_each`
    /// as it was, whatever characters the names hold.
    #[test]
    fn a_json_array_reads_back_through_json_each() {
        let names = [
            "plain",
            "quote\"d",
            "back\\slash",
            "new\nline",
            "\u{1}",
            "ünï",
        ];
        let conn = Connection::open_in_memory().unwrap();
        let back: Vec<String> = conn
            .prepare("SELECT value FROM json_each(?1)")
            .unwrap()
            .query_map([json_array(names)], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, names);
    }
}
