//! Which store handles are alive, told apart across processes, PID
//! namespaces and pid reuse.
//!
//! Each open [`Store`](crate::Store) is a row of `Processes` whose id comes
//! from a counter that never goes back, and holds an exclusive `flock` on
//! the file `<state>/processes/<id>` for as long as it is open. The kernel
//! drops the lock when the handle's process ends, however it ends. A pid
//! could not do this job: containers share stores across PID namespaces
//! (two processes there may both be PID 1), and `/proc` of one namespace
//! says nothing of another's.
//!
//! A handle is *dead* only when its lock can be taken or its file is
//! missing (files are made before their rows commit, and removed with
//! them). Anything else — a lock held, a file that cannot be opened for
//! another reason — counts as alive: deleting a live handle's row would
//! take its temporary roots and locks with it, through `ON DELETE CASCADE`.

use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, TransactionBehavior};

use crate::error::{io_err, Error};

/// The lock this handle holds while it lives; released when dropped.
#[derive(Debug)]
pub(crate) struct Alive {
    _file: File,
}

fn dir(state: &Path) -> PathBuf {
    state.join("processes")
}

/// Registers a new handle: its row and its held lock, in one transaction
/// so that no one sees the row without the file.
pub(crate) fn register(
    conn: &mut Connection,
    state: &Path,
    db_err: impl Fn(rusqlite::Error) -> Error,
) -> Result<(i64, Alive), Error> {
    let dir = dir(state);
    fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(&db_err)?;
    let id: i64 = tx
        .query_row(
            "UPDATE Counters SET value = value + 1 WHERE name = 'process' RETURNING value",
            [],
            |r| r.get(0),
        )
        .map_err(&db_err)?;
    // The pid is for people reading the table; nothing decides by it.
    tx.execute(
        "INSERT INTO Processes (id, pid, start_time) VALUES (?1, ?2, 0)",
        params![id, std::process::id()],
    )
    .map_err(&db_err)?;
    let path = dir.join(id.to_string());
    let file = File::create(&path).map_err(io_err("create", &path))?;
    file.try_lock().map_err(|e| {
        io_err("lock", &path)(match e {
            TryLockError::Error(e) => e,
            TryLockError::WouldBlock => io::Error::other("held by another handle"),
        })
    })?;
    tx.commit().map_err(&db_err)?;
    Ok((id, Alive { _file: file }))
}

/// Whether the handle `id` is certainly gone.
fn dead(state: &Path, id: i64) -> bool {
    match File::open(dir(state).join(id.to_string())) {
        Err(e) => e.kind() == io::ErrorKind::NotFound,
        Ok(file) => matches!(file.try_lock(), Ok(())),
    }
}

/// Removes the rows (and with them the temporary roots and locks) of
/// handles that are gone, and their files. Returns the ids still alive and
/// those removed.
pub(crate) fn clean(
    conn: &mut Connection,
    state: &Path,
    db_err: impl Fn(rusqlite::Error) -> Error,
) -> Result<(Vec<i64>, Vec<i64>), Error> {
    let ids: Vec<i64> = conn
        .prepare("SELECT id FROM Processes")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(&db_err)?;
    let gone: Vec<i64> = ids.iter().copied().filter(|&id| dead(state, id)).collect();
    if gone.is_empty() {
        return Ok((ids, Vec::new()));
    }
    // Checked again under the write lock: a file is only made inside the
    // transaction that adds its row, so none can appear meanwhile.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(&db_err)?;
    let mut held = Vec::new();
    let mut removed = Vec::new();
    for &id in &gone {
        let path = dir(state).join(id.to_string());
        let lock = match File::open(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(_) => continue,
            Ok(file) => match file.try_lock() {
                Ok(()) => Some(file),
                Err(_) => continue,
            },
        };
        tx.execute("DELETE FROM Processes WHERE id = ?1", [id])
            .map_err(&db_err)?;
        // Unlinked while we hold its lock: a new handle reusing the name
        // (none can: ids only grow) would never lock a file on its way out.
        let _ = fs::remove_file(&path);
        held.push(lock);
        removed.push(id);
    }
    tx.commit().map_err(&db_err)?;
    drop(held);
    let alive = ids.into_iter().filter(|id| !removed.contains(id)).collect();
    Ok((alive, removed))
}

/// Removes this handle's row and file (its lock goes with `alive`).
pub(crate) fn unregister(conn: &Connection, state: &Path, id: i64, alive: Alive) {
    let _ = conn.execute("DELETE FROM Processes WHERE id = ?1", [id]);
    let _ = fs::remove_file(dir(state).join(id.to_string()));
    drop(alive);
}
