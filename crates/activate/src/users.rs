//! Users and groups: `/etc/passwd`, `/etc/group` and `/etc/shadow` made to
//! hold the accounts a system declares, as NixOS's update-users-groups
//! does.
//!
//! bigtop shares these files with whatever else makes accounts on a
//! machine (its installer, an administrator, a package's scripts), so it
//! keeps a record, [`RECORD`] in the state directory, of the accounts it
//! manages: only those are rewritten or removed, and every other line of
//! the files (comments and lines it cannot read included) stays byte for
//! byte where it was. The record also remembers the id of every account
//! bigtop ever managed, removed ones included, so that files left behind
//! by a removed account never come to belong to another name, and a name
//! declared again gets its old id back.
//!
//! Everything is read and checked before anything is written: a collision
//! or an unknown group leaves the machine as it was. Home directories are
//! not made here and nothing is chowned; the caller does that with the
//! [`Ids`] it gets back.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::BTreeMap;
//! use bigtop_activate::users;
//! use bigtop_core::manifest::User;
//!
//! let root = tempfile::tempdir()?;
//! let etc = root.path().join("etc");
//! let state = root.path().join("bigtop/var/activate");
//! let web = User {
//!     uid: None,
//!     group: "nogroup".into(),
//!     home: "/var/empty".into(),
//!     shell: "/usr/sbin/nologin".into(),
//!     system: true,
//!     description: "web server".into(),
//! };
//! let declared = BTreeMap::from([("web".to_owned(), web)]);
//!
//! let applied = users::apply(&etc, &state, &declared, &BTreeMap::new())?;
//! assert_eq!(applied.ids.uid("web"), Some(999));
//! // Applying the same declarations again has nothing left to do.
//! assert!(users::plan(&etc, &state, &declared, &BTreeMap::new())?.is_empty());
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bigtop_core::manifest::{Group, User};
use serde::{Deserialize, Serialize};

use crate::fs::{create_dirs, read_optional, write_atomic, IoError};

/// Where the ids of system accounts and of groups are allocated, from the
/// top down (NixOS's range, so that a machine moving over keeps its ids
/// apart from people's).
pub const SYSTEM_IDS: RangeInclusive<u32> = 400..=999;

/// Where the uids of people's accounts are allocated, from the bottom up.
pub const NORMAL_UIDS: RangeInclusive<u32> = 1000..=29999;

/// The record's file name in the state directory.
pub const RECORD: &str = "accounts.json";

/// The record format this version writes and the newest it reads.
const RECORD_VERSION: u32 = 1;

// Accounts every machine has. They are added when absent and never
// removed, even when a system that declared them stops doing so: root is
// who activates, and nogroup is every account's default primary group.
const BASE_USERS: [(&str, &str); 2] = [
    ("root", "root:x:0:0:root:/root:/bin/sh"),
    (
        "nobody",
        "nobody:x:65534:65534:nobody:/var/empty:/usr/sbin/nologin",
    ),
];
const BASE_GROUPS: [(&str, &str); 2] = [("root", "root:x:0:"), ("nogroup", "nogroup:x:65534:")];

const PUBLIC_MODE: u32 = 0o644;
// Nothing is chowned here, so the file's group is whatever the activating
// process's is: a group read bit could only hand the hashes to someone
// who has no need of them.
const SHADOW_MODE: u32 = 0o600;
const RECORD_MODE: u32 = 0o644;

/// Why the accounts could not be planned or applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A declared name that would break the files or the tools reading
    /// them (a separator, a line break, a NIS `+`/`-`, all digits, …).
    #[error("{kind} name `{name}` is not a valid account name")]
    InvalidName {
        /// User or group.
        kind: AccountKind,
        /// The name.
        name: String,
    },
    /// A declared field holding a character `/etc/passwd` cannot hold.
    #[error("user `{user}` has a {field} that /etc/passwd cannot hold: {value:?}")]
    InvalidField {
        /// The user.
        user: String,
        /// `description`, `home` or `shell`.
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// A declared id of `u32::MAX`, which the kernel reads as "no id".
    #[error("{kind} `{name}` is declared with {} {id}, which means no id", kind.id_name())]
    InvalidId {
        /// User or group.
        kind: AccountKind,
        /// The account.
        name: String,
        /// The id.
        id: u32,
    },
    /// `root` declared with an id other than 0.
    #[error("{kind} `root` is declared with {} {id}, but root's is 0", kind.id_name())]
    RootId {
        /// User or group.
        kind: AccountKind,
        /// The id declared.
        id: u32,
    },
    /// A fixed id that another name holds.
    #[error("{kind} `{name}` is declared with {} {id}, which {holder}", kind.id_name())]
    Collision {
        /// User or group.
        kind: AccountKind,
        /// The account declaring it.
        name: String,
        /// The id.
        id: u32,
        /// Who holds it.
        holder: Holder,
    },
    /// A user whose primary group exists nowhere.
    #[error(
        "user `{user}` has primary group `{group}`, which is neither declared nor in `{}`",
        path.display()
    )]
    UnknownGroup {
        /// The user.
        user: String,
        /// Its primary group.
        group: String,
        /// The group file looked in.
        path: PathBuf,
    },
    /// Every id of the range is taken.
    #[error("no free {} left in {first}..={last} for {kind} `{name}`", kind.id_name())]
    Exhausted {
        /// User or group.
        kind: AccountKind,
        /// The account that needs one.
        name: String,
        /// The range's first id.
        first: u32,
        /// Its last id.
        last: u32,
    },
    /// A line of a file naming an account bigtop must change, but which
    /// cannot be read as that account's entry.
    #[error("line {line} of `{}` names `{name}` but is not a valid entry", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The line's number, from 1.
        line: usize,
        /// The name it starts with.
        name: String,
    },
    /// The record is not JSON of the expected shape.
    #[error("`{}` is not a valid account record", path.display())]
    Record {
        /// The record's path.
        path: PathBuf,
        /// What the parser found.
        #[source]
        source: serde_json::Error,
    },
    /// The record was written by a newer bigtop.
    #[error(
        "`{}` has record format {version}, newer than this bigtop reads ({RECORD_VERSION})",
        path.display()
    )]
    RecordVersion {
        /// The record's path.
        path: PathBuf,
        /// Its format.
        version: u32,
    },
    /// Reading a file failed.
    #[error("cannot read the accounts")]
    Read(#[source] IoError),
    /// Writing a file failed.
    #[error("cannot write the accounts")]
    Write(#[source] IoError),
}

/// Users or groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    /// A user (`/etc/passwd`).
    User,
    /// A group (`/etc/group`).
    Group,
}

impl AccountKind {
    fn id_name(self) -> &'static str {
        match self {
            AccountKind::User => "uid",
            AccountKind::Group => "gid",
        }
    }
}

impl fmt::Display for AccountKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccountKind::User => "user",
            AccountKind::Group => "group",
        })
    }
}

/// What already holds an id a declaration asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Holder {
    /// An entry of another name in the file.
    Entry {
        /// Its name.
        name: String,
        /// The file.
        path: PathBuf,
    },
    /// Another declaration asking for the same id.
    Declared(String),
    /// The record keeps it for another name, a removed account's.
    Remembered(String),
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Entry { name, path } => {
                write!(f, "`{}` gives to `{name}`", path.display())
            }
            Holder::Declared(name) => write!(f, "`{name}` is declared with too"),
            Holder::Remembered(name) => write!(f, "the account record keeps for `{name}`"),
        }
    }
}

/// What applying declarations changes, for the activation plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AccountChanges {
    /// Users that get an entry.
    pub users_added: Vec<String>,
    /// Users whose entry changes, each with what changes
    /// (`home /a -> /b, shell /bin/sh -> /bin/bash`).
    pub users_changed: Vec<(String, String)>,
    /// Users whose entries are removed.
    pub users_removed: Vec<String>,
    /// Groups that get an entry.
    pub groups_added: Vec<String>,
    /// Groups whose entry changes, each with what changes.
    pub groups_changed: Vec<(String, String)>,
    /// Groups whose entries are removed.
    pub groups_removed: Vec<String>,
}

impl AccountChanges {
    /// Whether no account changes.
    pub fn is_empty(&self) -> bool {
        self.users_added.is_empty()
            && self.users_changed.is_empty()
            && self.users_removed.is_empty()
            && self.groups_added.is_empty()
            && self.groups_changed.is_empty()
            && self.groups_removed.is_empty()
    }
}

/// The id of every account in the files (managed or not), as the C
/// library would resolve it: the first entry of a name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ids {
    /// Uids, by user name.
    pub users: BTreeMap<String, u32>,
    /// Gids, by group name.
    pub groups: BTreeMap<String, u32>,
}

impl Ids {
    /// The uid of `user`.
    pub fn uid(&self, user: &str) -> Option<u32> {
        self.users.get(user).copied()
    }

    /// The gid of `group`.
    pub fn gid(&self, group: &str) -> Option<u32> {
        self.groups.get(group).copied()
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The accounts it changed.
    pub changes: AccountChanges,
    /// The ids of every account afterwards.
    pub ids: Ids,
}

/// Reads the accounts in `etc_dir` and the record in `state_dir`, and says
/// what applying `users` and `groups` would change, writing nothing.
pub fn plan(
    etc_dir: &Path,
    state_dir: &Path,
    users: &BTreeMap<String, User>,
    groups: &BTreeMap<String, Group>,
) -> Result<AccountChanges, Error> {
    Ok(Accounts::read(etc_dir, state_dir)?
        .plan(users, groups)?
        .changes)
}

/// Makes `users` and `groups` the managed accounts of the machine whose
/// `/etc` is `etc_dir`, with its record in `state_dir`.
///
/// Applying the same declarations again writes nothing.
pub fn apply(
    etc_dir: &Path,
    state_dir: &Path,
    users: &BTreeMap<String, User>,
    groups: &BTreeMap<String, Group>,
) -> Result<Applied, Error> {
    Accounts::read(etc_dir, state_dir)?
        .plan(users, groups)?
        .apply()
}

/// The account files of a machine and bigtop's record of them, as read.
#[derive(Debug, Clone)]
pub struct Accounts {
    passwd: Table,
    group: Table,
    shadow: Table,
    record: Record,
    record_path: PathBuf,
    record_bytes: Option<Vec<u8>>,
    today: u64,
}

impl Accounts {
    /// Reads `passwd`, `group` and `shadow` from `etc_dir` (a missing one
    /// is empty) and the record from `state_dir` (a missing one manages
    /// nothing).
    pub fn read(etc_dir: &Path, state_dir: &Path) -> Result<Accounts, Error> {
        let record_path = state_dir.join(RECORD);
        let record_bytes = read_optional(&record_path).map_err(Error::Read)?;
        let record = match &record_bytes {
            Some(bytes) => Record::parse(&record_path, bytes)?,
            None => Record::default(),
        };
        Ok(Accounts {
            passwd: Table::read(Db::Passwd, etc_dir)?,
            group: Table::read(Db::Group, etc_dir)?,
            shadow: Table::read(Db::Shadow, etc_dir)?,
            record,
            record_path,
            record_bytes,
            today: days_since_epoch(),
        })
    }

    /// The ids of the accounts as they are now.
    pub fn ids(&self) -> Ids {
        Ids {
            users: self.passwd.ids(),
            groups: self.group.ids(),
        }
    }

    /// Checks `users` and `groups` against the files and the record, and
    /// computes the files that hold them, writing nothing.
    pub fn plan(
        &self,
        users: &BTreeMap<String, User>,
        groups: &BTreeMap<String, Group>,
    ) -> Result<Plan, Error> {
        validate(users, groups)?;
        let mut changes = AccountChanges::default();
        let (mut passwd, mut group, mut shadow) =
            (self.passwd.clone(), self.group.clone(), self.shadow.clone());

        let base_groups = group.ensure(&BASE_GROUPS);
        let base_users = passwd.ensure(&BASE_USERS);
        for name in &base_users {
            if !shadow.has_name(name) {
                shadow.push(locked(name, self.today));
            }
        }
        changes.groups_added.extend(base_groups.iter().cloned());
        changes.users_added.extend(base_users.iter().cloned());

        // Groups first: a user's entry holds its primary group's gid.
        let removed_groups = removed(&self.record.groups, groups, &BASE_GROUPS);
        group.check_readable(
            groups
                .keys()
                .map(String::as_str)
                .chain(removed_groups.iter().copied()),
        )?;
        let decls: Vec<Decl<'_>> = groups
            .iter()
            .map(|(name, g)| Decl {
                name,
                fixed: g.gid,
                system: true,
            })
            .collect();
        let gids = assign(AccountKind::Group, &group, &self.record.gids, &decls)?;
        let mut lines = BTreeMap::new();
        for (name, &gid) in groups.keys().zip(&gids) {
            let gid_text = gid.to_string();
            let old = group.fields(name);
            let line = match &old {
                Some(f) => join(&[name.as_bytes(), f[1], gid_text.as_bytes(), f[3]]),
                None => format!("{name}:x:{gid}:").into_bytes(),
            };
            match &old {
                None => changes.groups_added.push(name.clone()),
                Some(_) if base_groups.contains(name) => {}
                Some(f) => {
                    let mut why = Vec::new();
                    if !self.record.groups.contains(name) {
                        why.push("taken over".to_owned());
                    }
                    diff(&mut why, "gid", f[2], gid_text.as_bytes());
                    if !why.is_empty() {
                        changes.groups_changed.push((name.clone(), why.join(", ")));
                    }
                }
            }
            lines.insert(name.as_str(), line);
        }
        for name in &removed_groups {
            if group.first(name).is_some() {
                changes.groups_removed.push((*name).to_owned());
            }
        }
        let owned: BTreeSet<&str> = lines.keys().chain(&removed_groups).copied().collect();
        group.rebuild(&owned, lines);

        let group_ids = group.ids();
        let removed_users = removed(&self.record.users, users, &BASE_USERS);
        let names = || {
            users
                .keys()
                .map(String::as_str)
                .chain(removed_users.iter().copied())
        };
        passwd.check_readable(names())?;
        shadow.check_readable(names())?;
        let mut primary = Vec::with_capacity(users.len());
        for (name, user) in users {
            let gid = group_ids
                .get(&user.group)
                .ok_or_else(|| Error::UnknownGroup {
                    user: name.clone(),
                    group: user.group.clone(),
                    path: group.path.clone(),
                })?;
            primary.push(*gid);
        }
        let decls: Vec<Decl<'_>> = users
            .iter()
            .map(|(name, u)| Decl {
                name,
                fixed: u.uid,
                system: u.system,
            })
            .collect();
        let uids = assign(AccountKind::User, &passwd, &self.record.uids, &decls)?;
        let mut lines = BTreeMap::new();
        let mut shadow_lines = BTreeMap::new();
        for (((name, user), &uid), gid) in users.iter().zip(&uids).zip(primary) {
            let (uid_text, gid_text) = (uid.to_string(), gid.to_string());
            let old = passwd.fields(name);
            let password: &[u8] = old.as_ref().map_or(b"x", |f| f[1]);
            let new = [
                name.as_bytes(),
                password,
                uid_text.as_bytes(),
                gid_text.as_bytes(),
                user.description.as_bytes(),
                user.home.as_bytes(),
                user.shell.as_bytes(),
            ];
            let old_shadow = shadow.first(name).map(|l| l.raw.clone());
            match &old {
                None => changes.users_added.push(name.clone()),
                Some(_) if base_users.contains(name) => {}
                Some(f) => {
                    let mut why = Vec::new();
                    if !self.record.users.contains(name) {
                        why.push("taken over".to_owned());
                    }
                    diff(&mut why, "uid", f[2], new[2]);
                    diff(&mut why, "gid", f[3], new[3]);
                    if f[4] != new[4] {
                        why.push(format!(
                            "description {:?} -> {:?}",
                            String::from_utf8_lossy(f[4]),
                            user.description
                        ));
                    }
                    diff(&mut why, "home", f[5], new[5]);
                    diff(&mut why, "shell", f[6], new[6]);
                    if old_shadow.is_none() {
                        why.push("locked shadow entry added".to_owned());
                    }
                    if !why.is_empty() {
                        changes.users_changed.push((name.clone(), why.join(", ")));
                    }
                }
            }
            lines.insert(name.as_str(), join(&new));
            // A password set on the machine is the machine's: never reset.
            shadow_lines.insert(
                name.as_str(),
                old_shadow.unwrap_or_else(|| locked(name, self.today)),
            );
        }
        for name in &removed_users {
            if passwd.first(name).is_some() {
                changes.users_removed.push((*name).to_owned());
            }
        }
        let owned: BTreeSet<&str> = lines.keys().chain(&removed_users).copied().collect();
        passwd.rebuild(&owned, lines);
        shadow.rebuild(&owned, shadow_lines);

        let mut done = Record {
            version: RECORD_VERSION,
            users: users.keys().cloned().collect(),
            groups: groups.keys().cloned().collect(),
            uids: self.record.uids.clone(),
            gids: self.record.gids.clone(),
        };
        done.uids.extend(users.keys().cloned().zip(uids));
        done.gids.extend(groups.keys().cloned().zip(gids));
        // Written before the files, with the accounts being removed still
        // in it: a crash between the two leaves no allocation forgotten
        // and no removed account looking unmanaged to the next run.
        let mut during = done.clone();
        during.users.extend(self.record.users.iter().cloned());
        during.groups.extend(self.record.groups.iter().cloned());

        let (during, done) = (during.encode(), done.encode());
        let record_write = |bytes: &Vec<u8>| PendingWrite {
            path: self.record_path.clone(),
            bytes: bytes.clone(),
            mode: RECORD_MODE,
        };
        let mut writes = Vec::new();
        let mut record_now = self.record_bytes.as_ref();
        if record_now != Some(&during) {
            writes.push(record_write(&during));
            record_now = Some(&during);
        }
        // Groups before users, so that no entry names a gid not yet there.
        writes.extend(
            [&group, &passwd, &shadow]
                .into_iter()
                .filter_map(Table::write),
        );
        if record_now != Some(&done) {
            writes.push(record_write(&done));
        }

        Ok(Plan {
            changes,
            ids: Ids {
                users: passwd.ids(),
                groups: group.ids(),
            },
            writes,
        })
    }
}

/// The files and record that hold a set of declarations, computed and
/// checked but not yet written.
#[must_use = "a plan changes nothing until it is applied"]
#[derive(Debug, Clone)]
pub struct Plan {
    /// The accounts it changes.
    pub changes: AccountChanges,
    /// The ids of every account once it is applied.
    pub ids: Ids,
    writes: Vec<PendingWrite>,
}

impl Plan {
    /// Whether applying it would write nothing.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Writes the record and the files, each atomically, creating their
    /// directories if need be.
    pub fn apply(self) -> Result<Applied, Error> {
        for w in &self.writes {
            if let Some(dir) = w.path.parent() {
                create_dirs(dir).map_err(Error::Write)?;
            }
            write_atomic(&w.path, &w.bytes, w.mode).map_err(Error::Write)?;
        }
        Ok(Applied {
            changes: self.changes,
            ids: self.ids,
        })
    }
}

#[derive(Debug, Clone)]
struct PendingWrite {
    path: PathBuf,
    bytes: Vec<u8>,
    mode: u32,
}

/// What bigtop remembers of the accounts between activations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    version: u32,
    /// The users bigtop manages: declared by the last system applied.
    #[serde(default)]
    users: BTreeSet<String>,
    /// The groups it manages.
    #[serde(default)]
    groups: BTreeSet<String>,
    /// The uid of every user it ever managed, removed ones included.
    #[serde(default)]
    uids: BTreeMap<String, u32>,
    /// The gid of every group it ever managed.
    #[serde(default)]
    gids: BTreeMap<String, u32>,
}

impl Default for Record {
    fn default() -> Self {
        Record {
            version: RECORD_VERSION,
            users: BTreeSet::new(),
            groups: BTreeSet::new(),
            uids: BTreeMap::new(),
            gids: BTreeMap::new(),
        }
    }
}

impl Record {
    fn parse(path: &Path, bytes: &[u8]) -> Result<Record, Error> {
        let record: Record = serde_json::from_slice(bytes).map_err(|source| Error::Record {
            path: path.to_owned(),
            source,
        })?;
        if record.version > RECORD_VERSION {
            return Err(Error::RecordVersion {
                path: path.to_owned(),
                version: record.version,
            });
        }
        Ok(record)
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes =
            serde_json::to_vec_pretty(self).expect("strings and numbers always serialize");
        bytes.push(b'\n');
        bytes
    }
}

/// One of the three files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Db {
    Passwd,
    Group,
    Shadow,
}

impl Db {
    fn file_name(self) -> &'static str {
        match self {
            Db::Passwd => "passwd",
            Db::Group => "group",
            Db::Shadow => "shadow",
        }
    }

    fn mode(self) -> u32 {
        match self {
            Db::Passwd | Db::Group => PUBLIC_MODE,
            Db::Shadow => SHADOW_MODE,
        }
    }

    /// How many fields an entry has (any number from two in shadow, whose
    /// lines bigtop keeps or drops but never rewrites), and which must be
    /// numbers, the account's own id first.
    fn shape(self) -> (Option<usize>, &'static [usize]) {
        match self {
            Db::Passwd => (Some(7), &[2, 3]),
            Db::Group => (Some(4), &[2]),
            Db::Shadow => (None, &[]),
        }
    }
}

/// A line of a file, kept as its bytes so that it is written back as it
/// was.
#[derive(Debug, Clone)]
struct Line {
    raw: Vec<u8>,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// Blank, a comment, a NIS `+`/`-` line, or no `:` at all: no account.
    Other,
    /// Starts with an account's name but is no valid entry.
    Unreadable(Vec<u8>),
    /// An entry: its name and (but in shadow) its id.
    Entry { name: Vec<u8>, id: Option<u32> },
}

impl Line {
    fn parse(db: Db, raw: Vec<u8>) -> Line {
        let kind = classify(db, &raw);
        Line { raw, kind }
    }

    fn name(&self) -> Option<&[u8]> {
        match &self.kind {
            Kind::Entry { name, .. } | Kind::Unreadable(name) => Some(name),
            Kind::Other => None,
        }
    }

    fn entry(&self) -> Option<(&[u8], Option<u32>)> {
        match &self.kind {
            Kind::Entry { name, id } => Some((name, *id)),
            _ => None,
        }
    }
}

fn classify(db: Db, raw: &[u8]) -> Kind {
    let fields: Vec<&[u8]> = raw.split(|&b| b == b':').collect();
    let name = match fields.first() {
        Some(name) if fields.len() >= 2 && !name.is_empty() => *name,
        _ => return Kind::Other,
    };
    if matches!(name[0], b'#' | b'+' | b'-') {
        return Kind::Other;
    }
    let (count, numbers) = db.shape();
    let number = |i: usize| fields.get(i).and_then(|f| parse_id(f));
    if count.is_some_and(|c| c != fields.len()) || numbers.iter().any(|&i| number(i).is_none()) {
        return Kind::Unreadable(name.to_vec());
    }
    Kind::Entry {
        name: name.to_vec(),
        id: numbers.first().and_then(|&i| number(i)),
    }
}

fn parse_id(field: &[u8]) -> Option<u32> {
    // `str::parse` alone would take `+5`, which the C library does not.
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// A file as lines.
#[derive(Debug, Clone)]
struct Table {
    db: Db,
    path: PathBuf,
    original: Option<Vec<u8>>,
    lines: Vec<Line>,
}

impl Table {
    fn read(db: Db, etc_dir: &Path) -> Result<Table, Error> {
        let path = etc_dir.join(db.file_name());
        let original = read_optional(&path).map_err(Error::Read)?;
        let lines = match &original {
            Some(bytes) if !bytes.is_empty() => {
                // The last newline ends the last line, it starts no other.
                let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
                body.split(|&b| b == b'\n')
                    .map(|l| Line::parse(db, l.to_vec()))
                    .collect()
            }
            _ => Vec::new(),
        };
        Ok(Table {
            db,
            path,
            original,
            lines,
        })
    }

    fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for line in &self.lines {
            out.extend_from_slice(&line.raw);
            out.push(b'\n');
        }
        out
    }

    /// The write that makes the file what this table holds, if it differs.
    fn write(&self) -> Option<PendingWrite> {
        let bytes = self.render();
        (self.original.as_ref() != Some(&bytes)).then(|| PendingWrite {
            path: self.path.clone(),
            bytes,
            mode: self.db.mode(),
        })
    }

    fn push(&mut self, raw: Vec<u8>) {
        self.lines.push(Line::parse(self.db, raw));
    }

    /// The first entry of `name`, the one the C library reads.
    fn first(&self, name: &str) -> Option<&Line> {
        self.lines
            .iter()
            .find(|l| l.entry().is_some_and(|(n, _)| n == name.as_bytes()))
    }

    fn fields(&self, name: &str) -> Option<Vec<&[u8]>> {
        self.first(name)
            .map(|l| l.raw.split(|&b| b == b':').collect())
    }

    fn has_name(&self, name: &str) -> bool {
        self.lines.iter().any(|l| l.name() == Some(name.as_bytes()))
    }

    fn ids(&self) -> BTreeMap<String, u32> {
        let mut ids = BTreeMap::new();
        for (name, id) in self.lines.iter().filter_map(Line::entry) {
            if let (Ok(name), Some(id)) = (std::str::from_utf8(name), id) {
                ids.entry(name.to_owned()).or_insert(id);
            }
        }
        ids
    }

    /// Appends the base entries whose name has no line, and says which.
    fn ensure(&mut self, base: &[(&str, &str)]) -> Vec<String> {
        let mut added = Vec::new();
        for (name, line) in base {
            // An unreadable line of that name stays the only one: a second
            // would hide it from the C library, not mend it.
            if !self.has_name(name) {
                self.push(line.as_bytes().to_vec());
                added.push((*name).to_owned());
            }
        }
        added
    }

    fn check_readable<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Result<(), Error> {
        let names: BTreeSet<&str> = names.into_iter().collect();
        for (i, line) in self.lines.iter().enumerate() {
            if let Kind::Unreadable(name) = &line.kind {
                if std::str::from_utf8(name).is_ok_and(|n| names.contains(n)) {
                    return Err(Error::Unreadable {
                        path: self.path.clone(),
                        line: i + 1,
                        name: String::from_utf8_lossy(name).into_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Replaces the lines of the `owned` names: the first entry of a name
    /// in `new` by its new line, every other line of an owned name
    /// dropped (a later duplicate would show once the first went), and
    /// the rest of `new` appended. Every other line stays as it was.
    fn rebuild(&mut self, owned: &BTreeSet<&str>, mut new: BTreeMap<&str, Vec<u8>>) {
        let is_owned = |name: &[u8]| std::str::from_utf8(name).is_ok_and(|n| owned.contains(n));
        let old = std::mem::take(&mut self.lines);
        for line in old {
            match line.entry() {
                Some((name, _)) if is_owned(name) => {
                    let name = String::from_utf8_lossy(name).into_owned();
                    if let Some(raw) = new.remove(name.as_str()) {
                        self.push(raw);
                    }
                }
                _ => self.lines.push(line),
            }
        }
        for raw in new.into_values() {
            self.push(raw);
        }
    }
}

/// An account to give an id to.
struct Decl<'a> {
    name: &'a str,
    fixed: Option<u32>,
    system: bool,
}

/// The id of each of `decls`, in order: a fixed one if declared (checked
/// against every other name's), else the one its entry has, else the one
/// the record remembers if no other name took it meanwhile, else the first
/// free in its range.
fn assign(
    kind: AccountKind,
    table: &Table,
    remembered: &BTreeMap<String, u32>,
    decls: &[Decl<'_>],
) -> Result<Vec<u32>, Error> {
    let entries: Vec<(&[u8], u32)> = table
        .lines
        .iter()
        .filter_map(Line::entry)
        .filter_map(|(name, id)| Some((name, id?)))
        .collect();
    let other_entry = |id: u32, name: &str| {
        entries
            .iter()
            .find(|&&(n, i)| i == id && n != name.as_bytes())
            .map(|&(n, _)| n)
    };

    let mut ids: Vec<Option<u32>> = Vec::with_capacity(decls.len());
    for d in decls {
        let Some(id) = d.fixed else {
            ids.push(table.first(d.name).and_then(|l| l.entry()?.1));
            continue;
        };
        let holder = if let Some(name) = other_entry(id, d.name) {
            Some(Holder::Entry {
                name: String::from_utf8_lossy(name).into_owned(),
                path: table.path.clone(),
            })
        } else if let Some(other) = decls
            .iter()
            .find(|o| o.fixed == Some(id) && o.name != d.name)
        {
            Some(Holder::Declared(other.name.to_owned()))
        } else {
            remembered
                .iter()
                .find(|&(n, &i)| i == id && n != d.name)
                .map(|(n, _)| Holder::Remembered(n.clone()))
        };
        if let Some(holder) = holder {
            return Err(Error::Collision {
                kind,
                name: d.name.to_owned(),
                id,
                holder,
            });
        }
        ids.push(Some(id));
    }

    for (i, d) in decls.iter().enumerate() {
        if ids[i].is_some() {
            continue;
        }
        if let Some(&id) = remembered.get(d.name) {
            if other_entry(id, d.name).is_none() && !ids.contains(&Some(id)) {
                ids[i] = Some(id);
            }
        }
    }

    // Every id remembered counts as taken, whoever it was for: that is
    // what keeps a removed account's files from a new name.
    let mut used: BTreeSet<u32> = entries
        .iter()
        .map(|&(_, id)| id)
        .chain(remembered.values().copied())
        .chain(ids.iter().flatten().copied())
        .collect();
    let mut out = Vec::with_capacity(decls.len());
    for (id, d) in ids.into_iter().zip(decls) {
        let id = match id {
            Some(id) => id,
            None => {
                let range = if d.system || kind == AccountKind::Group {
                    SYSTEM_IDS
                } else {
                    NORMAL_UIDS
                };
                let free = |i: &u32| !used.contains(i);
                let found = if d.system {
                    range.clone().rev().find(free)
                } else {
                    range.clone().find(free)
                };
                let id = found.ok_or_else(|| Error::Exhausted {
                    kind,
                    name: d.name.to_owned(),
                    first: *range.start(),
                    last: *range.end(),
                })?;
                used.insert(id);
                id
            }
        };
        out.push(id);
    }
    Ok(out)
}

/// The managed names no longer declared, but the base accounts, which
/// stay (unmanaged) when a system stops declaring them.
fn removed<'a, T>(
    managed: &'a BTreeSet<String>,
    declared: &BTreeMap<String, T>,
    base: &[(&str, &str)],
) -> BTreeSet<&'a str> {
    managed
        .iter()
        .map(String::as_str)
        .filter(|n| !declared.contains_key(*n) && !base.iter().any(|(b, _)| b == n))
        .collect()
}

fn validate(users: &BTreeMap<String, User>, groups: &BTreeMap<String, Group>) -> Result<(), Error> {
    for (name, group) in groups {
        check_account(AccountKind::Group, name, group.gid)?;
    }
    for (name, user) in users {
        check_account(AccountKind::User, name, user.uid)?;
        let fields = [
            ("description", &user.description),
            ("home", &user.home),
            ("shell", &user.shell),
        ];
        for (field, value) in fields {
            if value.bytes().any(|b| b == b':' || b.is_ascii_control()) {
                return Err(Error::InvalidField {
                    user: name.clone(),
                    field,
                    value: value.clone(),
                });
            }
        }
    }
    Ok(())
}

fn check_account(kind: AccountKind, name: &str, id: Option<u32>) -> Result<(), Error> {
    if !valid_name(name) {
        return Err(Error::InvalidName {
            kind,
            name: name.to_owned(),
        });
    }
    match id {
        Some(u32::MAX) => Err(Error::InvalidId {
            kind,
            name: name.to_owned(),
            id: u32::MAX,
        }),
        Some(id) if name == "root" && id != 0 => Err(Error::RootId { kind, id }),
        _ => Ok(()),
    }
}

/// Whether `name` can be an account's: up to 32 bytes of letters, digits,
/// `_`, `-` and `.` (and a final `$`, for machine accounts), not starting
/// with `-` or `.`, and not all digits, which tools would read as an id.
fn valid_name(name: &str) -> bool {
    let body = name.strip_suffix('$').unwrap_or(name);
    !body.is_empty()
        && name.len() <= 32
        && !body.starts_with(['-', '.'])
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !body.bytes().all(|b| b.is_ascii_digit())
}

fn diff(why: &mut Vec<String>, what: &str, old: &[u8], new: &[u8]) {
    if old != new {
        why.push(format!(
            "{what} {} -> {}",
            String::from_utf8_lossy(old),
            String::from_utf8_lossy(new)
        ));
    }
}

fn join(fields: &[&[u8]]) -> Vec<u8> {
    fields.join(&b':')
}

/// A shadow entry no password opens: the account exists, but logs in
/// only by other means until someone sets one.
fn locked(name: &str, today: u64) -> Vec<u8> {
    format!("{name}:!:{today}::::::").into_bytes()
}

fn days_since_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A machine root in a temporary directory.
    struct Machine {
        dir: tempfile::TempDir,
        etc: PathBuf,
        state: PathBuf,
    }

    impl Machine {
        fn new() -> Result<Machine, Box<dyn std::error::Error>> {
            let dir = tempfile::tempdir()?;
            let etc = dir.path().join("etc");
            let state = dir.path().join("bigtop/var/activate");
            fs::create_dir_all(&etc)?;
            Ok(Machine { dir, etc, state })
        }

        fn write(&self, file: &str, text: &str) -> TestResult {
            fs::write(self.etc.join(file), text)?;
            Ok(())
        }

        fn read(&self, file: &str) -> Result<String, Box<dyn std::error::Error>> {
            Ok(fs::read_to_string(self.etc.join(file))?)
        }

        fn apply(
            &self,
            users: &[(&str, User)],
            groups: &[(&str, Option<u32>)],
        ) -> Result<Applied, Error> {
            let (users, groups) = declarations(users, groups);
            apply(&self.etc, &self.state, &users, &groups)
        }

        fn plan(
            &self,
            users: &[(&str, User)],
            groups: &[(&str, Option<u32>)],
        ) -> Result<AccountChanges, Error> {
            let (users, groups) = declarations(users, groups);
            plan(&self.etc, &self.state, &users, &groups)
        }

        /// Every file under the root and its bytes.
        fn snapshot(&self) -> Result<BTreeMap<PathBuf, Vec<u8>>, Box<dyn std::error::Error>> {
            let mut files = BTreeMap::new();
            let mut dirs = vec![self.dir.path().to_owned()];
            while let Some(dir) = dirs.pop() {
                for entry in fs::read_dir(dir)? {
                    let path = entry?.path();
                    if path.is_dir() {
                        dirs.push(path);
                    } else {
                        files.insert(path.clone(), fs::read(&path)?);
                    }
                }
            }
            Ok(files)
        }
    }

    fn declarations(
        users: &[(&str, User)],
        groups: &[(&str, Option<u32>)],
    ) -> (BTreeMap<String, User>, BTreeMap<String, Group>) {
        (
            users
                .iter()
                .map(|(n, u)| ((*n).to_owned(), u.clone()))
                .collect(),
            groups
                .iter()
                .map(|&(n, gid)| (n.to_owned(), Group { gid }))
                .collect(),
        )
    }

    fn person(name: &str) -> User {
        User {
            uid: None,
            group: "nogroup".into(),
            home: format!("/home/{name}"),
            shell: "/bin/sh".into(),
            system: false,
            description: String::new(),
        }
    }

    fn service() -> User {
        User {
            system: true,
            home: "/var/empty".into(),
            shell: "/usr/sbin/nologin".into(),
            ..person("")
        }
    }

    fn with_uid(uid: u32, user: User) -> User {
        User {
            uid: Some(uid),
            ..user
        }
    }

    fn with_group(group: &str, user: User) -> User {
        User {
            group: group.into(),
            ..user
        }
    }

    #[test]
    fn a_fresh_machine_starts_with_root_and_nobody() -> TestResult {
        let m = Machine::new()?;
        let applied = m.apply(&[], &[])?;
        assert_eq!(
            m.read("passwd")?,
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/var/empty:/usr/sbin/nologin\n"
        );
        assert_eq!(m.read("group")?, "root:x:0:\nnogroup:x:65534:\n");
        let shadow = m.read("shadow")?;
        let names: Vec<&str> = shadow
            .lines()
            .map(|l| &l[..l.find(":!:").unwrap_or(0)])
            .collect();
        assert_eq!(names, ["root", "nobody"]);
        assert_eq!(applied.changes.users_added, ["root", "nobody"]);
        assert_eq!(applied.ids.gid("nogroup"), Some(65534));
        for (file, mode) in [("passwd", 0o644), ("group", 0o644), ("shadow", 0o600)] {
            assert_eq!(
                fs::metadata(m.etc.join(file))?.permissions().mode() & 0o777,
                mode,
                "{file}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_plan_writes_nothing() -> TestResult {
        let m = Machine::new()?;
        let before = m.snapshot()?;
        let changes = m.plan(&[("alice", person("alice"))], &[("web", None)])?;
        assert_eq!(changes.users_added, ["root", "nobody", "alice"]);
        assert_eq!(changes.groups_added, ["root", "nogroup", "web"]);
        assert_eq!(m.snapshot()?, before);
        Ok(())
    }

    #[test]
    fn a_removed_uid_goes_to_no_other_name_and_comes_back_with_its_own() -> TestResult {
        let m = Machine::new()?;
        let first = m.apply(&[("alice", person("alice"))], &[])?;
        assert_eq!(first.ids.uid("alice"), Some(1000));

        let removed = m.apply(&[], &[])?;
        assert_eq!(removed.changes.users_removed, ["alice"]);
        assert!(!m.read("passwd")?.contains("alice"));
        assert!(!m.read("shadow")?.contains("alice"));

        let bob = m.apply(&[("bob", person("bob"))], &[])?;
        assert_eq!(bob.ids.uid("bob"), Some(1001));

        let back = m.apply(&[("alice", person("alice")), ("bob", person("bob"))], &[])?;
        assert_eq!(back.ids.uid("alice"), Some(1000));
        assert_eq!(back.ids.uid("bob"), Some(1001));
        Ok(())
    }

    #[test]
    fn unmanaged_lines_survive_every_apply_byte_for_byte() -> TestResult {
        let m = Machine::new()?;
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      # hand-made accounts below, keep\n\
                      alice:x:1500:100:Alice:/home/alice:/bin/zsh\n\
                      \n\
                      this is not an entry\n\
                      +@netgroup::::::\n\
                      bad:x:1x:100::/:/bin/sh\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
        let group = "root:x:0:\nusers:x:100:alice\nnogroup:x:65534:\n";
        let shadow = "root:$6$root:19000:0:99999:7:::\nalice:$6$alice:19000:0:99999:7:::\n";
        m.write("passwd", passwd)?;
        m.write("group", group)?;
        m.write("shadow", shadow)?;

        let svc = with_group("users", service());
        let applied = m.apply(&[("svc", svc)], &[])?;
        assert_eq!(applied.changes.users_added, ["svc"]);
        assert_eq!(
            m.read("passwd")?,
            format!("{passwd}svc:x:999:100::/var/empty:/usr/sbin/nologin\n")
        );
        assert_eq!(m.read("group")?, group);
        assert!(m.read("shadow")?.starts_with(&format!("{shadow}svc:!:")));

        let removed = m.apply(&[], &[])?;
        assert_eq!(removed.changes.users_removed, ["svc"]);
        assert_eq!(m.read("passwd")?, passwd);
        assert_eq!(m.read("group")?, group);
        assert_eq!(m.read("shadow")?, shadow);
        Ok(())
    }

    #[test]
    fn a_fixed_uid_held_by_an_unmanaged_user_fails_before_anything_is_written() -> TestResult {
        let m = Machine::new()?;
        m.write("passwd", "alice:x:1500:100::/home/alice:/bin/sh\n")?;
        let before = m.snapshot()?;
        let err = m
            .apply(
                &[
                    ("carol", person("carol")),
                    ("bob", with_uid(1500, person("bob"))),
                ],
                &[("web", None)],
            )
            .err()
            .ok_or("the collision went through")?;
        match &err {
            Error::Collision {
                kind: AccountKind::User,
                name,
                id: 1500,
                holder: Holder::Entry { name: holder, .. },
            } => {
                assert_eq!((name.as_str(), holder.as_str()), ("bob", "alice"));
            }
            other => panic!("not the collision: {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains("`bob`") && message.contains("1500") && message.contains("`alice`"),
            "{message}"
        );
        assert_eq!(m.snapshot()?, before);
        Ok(())
    }

    #[test]
    fn a_fixed_id_declared_twice_or_remembered_for_another_name_collides() -> TestResult {
        let m = Machine::new()?;
        let err = m.apply(
            &[
                ("a", with_uid(2000, person("a"))),
                ("b", with_uid(2000, person("b"))),
            ],
            &[],
        );
        assert!(
            matches!(&err, Err(Error::Collision { holder: Holder::Declared(other), .. }) if other == "b"),
            "{err:?}"
        );
        let err = m.apply(&[], &[("x", Some(700)), ("y", Some(700))]);
        assert!(
            matches!(
                &err,
                Err(Error::Collision {
                    kind: AccountKind::Group,
                    id: 700,
                    ..
                })
            ),
            "{err:?}"
        );

        m.apply(&[("alice", person("alice"))], &[])?;
        m.apply(&[], &[])?;
        let err = m.apply(&[("bob", with_uid(1000, person("bob")))], &[]);
        assert!(
            matches!(&err, Err(Error::Collision { holder: Holder::Remembered(n), .. }) if n == "alice"),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn system_accounts_count_down_and_people_count_up_past_used_ids() -> TestResult {
        let m = Machine::new()?;
        m.write(
            "passwd",
            "old:x:999:65534::/:/bin/sh\nsomeone:x:1000:65534::/:/bin/sh\n",
        )?;
        m.write("group", "old:x:999:\n")?;
        let applied = m.apply(
            &[
                ("svc1", service()),
                ("svc2", service()),
                ("alice", person("alice")),
                ("bob", person("bob")),
                ("fixed", with_uid(5000, person("fixed"))),
            ],
            &[("web", None), ("db", None), ("wheel", Some(10))],
        )?;
        let ids = &applied.ids;
        assert_eq!((ids.uid("svc1"), ids.uid("svc2")), (Some(998), Some(997)));
        assert_eq!((ids.uid("alice"), ids.uid("bob")), (Some(1001), Some(1002)));
        assert_eq!(ids.uid("fixed"), Some(5000));
        // Groups are allocated in name order from the system range.
        assert_eq!((ids.gid("db"), ids.gid("web")), (Some(998), Some(997)));
        assert_eq!(ids.gid("wheel"), Some(10));
        Ok(())
    }

    #[test]
    fn a_user_whose_group_exists_nowhere_fails_naming_both() -> TestResult {
        let m = Machine::new()?;
        let err = m
            .apply(&[("alice", with_group("wheel", person("alice")))], &[])
            .err()
            .ok_or("an unknown group went through")?;
        assert!(
            matches!(&err, Error::UnknownGroup { user, group, .. } if user == "alice" && group == "wheel")
        );
        let message = err.to_string();
        assert!(
            message.contains("`alice`") && message.contains("`wheel`"),
            "{message}"
        );
        assert!(m.snapshot()?.is_empty());

        // A group the system stops declaring is gone for its users too.
        m.apply(
            &[("alice", with_group("wheel", person("alice")))],
            &[("wheel", None)],
        )?;
        let err = m.apply(&[("alice", with_group("wheel", person("alice")))], &[]);
        assert!(matches!(err, Err(Error::UnknownGroup { .. })), "{err:?}");
        Ok(())
    }

    #[test]
    fn applying_twice_changes_nothing_and_a_password_survives_changes() -> TestResult {
        let m = Machine::new()?;
        let users = [
            ("alice", with_group("staff", person("alice"))),
            ("svc", service()),
        ];
        let groups = [("staff", None)];
        m.apply(&users, &groups)?;
        let once = m.snapshot()?;
        let again = m.apply(&users, &groups)?;
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        assert_eq!(m.snapshot()?, once);
        let (users_map, groups_map) = declarations(&users, &groups);
        assert!(Accounts::read(&m.etc, &m.state)?
            .plan(&users_map, &groups_map)?
            .is_empty());

        // Someone sets alice's password on the machine.
        let shadow = m.read("shadow")?;
        let line = shadow
            .lines()
            .find(|l| l.starts_with("alice:"))
            .ok_or("no shadow line")?;
        let with_password = line.replacen(":!:", ":$6$salt$hash:", 1);
        m.write("shadow", &shadow.replace(line, &with_password))?;

        let mut moved = with_group("staff", person("alice"));
        moved.home = "/srv/alice".into();
        let applied = m.apply(&[("alice", moved), ("svc", service())], &groups)?;
        assert_eq!(
            applied.changes.users_changed,
            [(
                "alice".to_owned(),
                "home /home/alice -> /srv/alice".to_owned()
            )]
        );
        assert!(m.read("shadow")?.lines().any(|l| l == with_password));
        assert!(m.read("passwd")?.contains(":/srv/alice:"));
        Ok(())
    }

    #[test]
    fn an_unmanaged_account_declared_is_taken_over_with_its_id() -> TestResult {
        let m = Machine::new()?;
        m.write("passwd", "alice:x:1500:65534:Alice:/home/alice:/bin/zsh\n")?;
        m.write("shadow", "alice:$6$kept:19000::::::\n")?;
        let applied = m.apply(&[("alice", person("alice"))], &[])?;
        assert_eq!(applied.ids.uid("alice"), Some(1500));
        assert_eq!(
            applied.changes.users_changed,
            [(
                "alice".to_owned(),
                "taken over, description \"Alice\" -> \"\", shell /bin/zsh -> /bin/sh".to_owned()
            )]
        );
        assert!(m.read("shadow")?.starts_with("alice:$6$kept:19000::::::\n"));

        // Now managed, it goes when the system stops declaring it.
        m.apply(&[], &[])?;
        assert!(!m.read("passwd")?.contains("alice"));
        Ok(())
    }

    #[test]
    fn root_stays_when_a_system_stops_declaring_it() -> TestResult {
        let m = Machine::new()?;
        let root = User {
            uid: Some(0),
            group: "root".into(),
            home: "/root".into(),
            shell: "/bin/bash".into(),
            system: true,
            description: "System administrator".into(),
        };
        m.apply(&[("root", root.clone())], &[("root", Some(0))])?;
        assert!(m
            .read("passwd")?
            .starts_with("root:x:0:0:System administrator:/root:/bin/bash\n"));
        let applied = m.apply(&[], &[])?;
        assert!(applied.changes.is_empty(), "{:?}", applied.changes);
        assert_eq!(applied.ids.uid("root"), Some(0));

        let err = m.apply(&[("root", with_uid(5, root))], &[]);
        assert!(
            matches!(
                err,
                Err(Error::RootId {
                    kind: AccountKind::User,
                    id: 5
                })
            ),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn names_and_fields_that_would_break_the_files_are_refused() -> TestResult {
        let m = Machine::new()?;
        for name in ["a:b", "", "-x", "+x", "12", "a\nb", "a b", &"x".repeat(33)] {
            let err = m.apply(&[(name, person("x"))], &[]);
            assert!(
                matches!(&err, Err(Error::InvalidName { name: n, .. }) if n == name),
                "{name:?}: {err:?}"
            );
        }
        assert!(m.apply(&[("host$", person("host"))], &[]).is_ok());
        let mut bad = person("alice");
        bad.home = "/home/a:b".into();
        let err = m.apply(&[("alice", bad)], &[]);
        assert!(
            matches!(&err, Err(Error::InvalidField { field: "home", .. })),
            "{err:?}"
        );
        let err = m.apply(&[("alice", with_uid(u32::MAX, person("alice")))], &[]);
        assert!(matches!(&err, Err(Error::InvalidId { .. })), "{err:?}");
        Ok(())
    }

    #[test]
    fn a_line_of_a_declared_name_that_cannot_be_read_is_an_error() -> TestResult {
        let m = Machine::new()?;
        m.write("passwd", "# accounts\nalice:x:many:100::/:/bin/sh\n")?;
        let err = m.apply(&[("alice", person("alice"))], &[]);
        assert!(
            matches!(&err, Err(Error::Unreadable { line: 2, name, .. }) if name == "alice"),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn a_garbage_record_is_an_error_naming_it() -> TestResult {
        let m = Machine::new()?;
        fs::create_dir_all(&m.state)?;
        let record = m.state.join(RECORD);
        fs::write(&record, "uids: alice=1000\n")?;
        let err = m.apply(&[], &[]).err().ok_or("garbage was read")?;
        assert!(
            matches!(&err, Error::Record { path, .. } if *path == record),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&record.display().to_string()),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some());

        fs::write(&record, r#"{"version": 99}"#)?;
        let err = m.apply(&[], &[]);
        assert!(
            matches!(err, Err(Error::RecordVersion { version: 99, .. })),
            "{err:?}"
        );
        Ok(())
    }

    /// Makes writing `file` fail: a directory where its temporary goes.
    fn block(m: &Machine, file: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
        let tmp = crate::fs::temp_name(&m.etc.join(file));
        fs::create_dir_all(tmp.join("blocked"))?;
        Ok(tmp)
    }

    #[test]
    fn an_allocation_survives_a_write_that_fails_after_the_record() -> TestResult {
        let m = Machine::new()?;
        m.apply(&[], &[])?;
        let blocked = block(&m, "passwd")?;
        let err = m.apply(&[("alice", person("alice"))], &[]);
        assert!(matches!(err, Err(Error::Write(_))), "{err:?}");
        assert!(!m.read("passwd")?.contains("alice"));
        fs::remove_dir_all(blocked)?;

        // alice never reached passwd, yet her uid is not bob's.
        let applied = m.apply(&[("bob", person("bob"))], &[])?;
        assert_eq!(applied.ids.uid("bob"), Some(1001));
        Ok(())
    }

    #[test]
    fn a_removal_interrupted_after_the_record_finishes_on_the_next_run() -> TestResult {
        let m = Machine::new()?;
        m.apply(&[("alice", person("alice"))], &[])?;
        let blocked = block(&m, "passwd")?;
        assert!(m.apply(&[], &[]).is_err());
        assert!(m.read("passwd")?.contains("alice"));
        fs::remove_dir_all(blocked)?;

        let applied = m.apply(&[], &[])?;
        assert_eq!(applied.changes.users_removed, ["alice"]);
        assert!(!m.read("passwd")?.contains("alice"));
        Ok(())
    }
}
