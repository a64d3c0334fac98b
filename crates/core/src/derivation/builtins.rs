//! The builders a store runs in-process (no process, no sandbox), by
//! name, and the environment variables each reads. Evaluation writes
//! derivations with these builders; `bigtop-store` builds them.

/// Writes a file: `text`, and `executable` = `1` for mode 0555.
pub const WRITE_FILE: &str = "builtin:write-file";
/// Joins store paths into one tree of symlinks: `paths`, separated by
/// spaces; two paths providing the same file is an error.
pub const SYMLINK_JOIN: &str = "builtin:symlink-join";
/// Makes a tree of files and symlinks from `entries`: a JSON array of
/// `{"path": "etc/hosts", "text": "…", "executable": false}` (a file) and
/// `{"path": "sw", "link": "/bigtop/store/…"}` (a symlink), with paths
/// relative to the output; parent directories are made.
pub const WRITE_TREE: &str = "builtin:write-tree";
/// Copies the store path `src`.
pub const COPY: &str = "builtin:copy";
/// Fetches `url` (or `urls`: mirrors separated by spaces, tried in order)
/// into a fixed output; `executable` = `1` for mode 0555; `unpack` = `1`
/// to unpack a tar or gzip-compressed tar instead (a tarball of one
/// directory gives that directory's contents).
pub const FETCH_URL: &str = "builtin:fetchurl";
