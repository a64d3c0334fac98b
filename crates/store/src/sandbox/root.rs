//! The sandbox's root layout: what the host side prepares (a private
//! scratch dir, the store dir with a mount point per input) and the list
//! of file system steps ([`Op`]) the builder child takes, in order, to
//! build its root on a tmpfs. Everything here runs in the parent; the
//! steps are applied by the builder child.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{prep_err, SandboxError, SandboxSpec};

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
pub(super) struct MountAttr {
    pub(super) attr_set: u64,
    pub(super) attr_clr: u64,
    pub(super) propagation: u64,
    pub(super) userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// One step of the builder's file system setup, prepared before the
/// `clone`.
pub(super) enum Op {
    /// `mount(2)`.
    Mount {
        src: CString,
        dst: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// `mount_setattr(2)`: read-only (or writable again) in one call for a
    /// whole tree, where `mount(MS_REMOUNT)` takes one call per mount and
    /// must repeat every locked flag of the source.
    SetAttr {
        path: CString,
        recursive: bool,
        set: u64,
        clear: u64,
    },
    /// `open_tree(OPEN_TREE_CLONE)`: a detached bind mount of a host
    /// directory that the root's tmpfs is about to cover, kept for
    /// [`Op::MoveTree`].
    OpenTree { path: CString },
    /// `move_mount(2)` of the tree [`Op::OpenTree`] detached.
    MoveTree { dst: CString },
    /// A directory; one that exists already is no error.
    Mkdir { path: CString },
    /// An empty file, a mount point for a file; one that exists already
    /// is no error.
    Touch { path: CString },
    /// A new file with these contents.
    Write { path: CString, contents: Vec<u8> },
    /// A symbolic link.
    Symlink { target: CString, path: CString },
}

impl Op {
    fn bind(src: &Path, dst: &Path) -> Result<Op, SandboxError> {
        Ok(Op::Mount {
            src: c_path(src)?,
            dst: c_path(dst)?,
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            data: None,
        })
    }

    pub(super) fn describe(&self) -> String {
        let show = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Op::Mount {
                src,
                dst,
                fstype: Some(fstype),
                ..
            } => format!("mount {} `{}` on `{}`", show(fstype), show(src), show(dst)),
            Op::Mount { src, dst, .. } => {
                format!("bind-mount `{}` on `{}`", show(src), show(dst))
            }
            Op::SetAttr {
                path, set, clear, ..
            } => format!(
                "make `{}` {}",
                show(path),
                if set & MOUNT_ATTR_RDONLY != 0 {
                    "read-only"
                } else if clear & MOUNT_ATTR_RDONLY != 0 {
                    "writable"
                } else {
                    "nosuid and nodev"
                }
            ),
            Op::OpenTree { path } => format!("clone the mount tree of `{}`", show(path)),
            Op::MoveTree { dst } => format!("move the store tree onto `{}`", show(dst)),
            Op::Mkdir { path } => format!("create directory `{}`", show(path)),
            Op::Touch { path } | Op::Write { path, .. } => {
                format!("create file `{}`", show(path))
            }
            Op::Symlink { target, path } => {
                format!("create symlink `{}` -> `{}`", show(path), show(target))
            }
        }
    }
}

pub(super) fn c_path(path: &Path) -> Result<CString, SandboxError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| SandboxError::InvalidSpec {
        field: "path",
        value: path.display().to_string(),
        reason: "contains a NUL byte",
    })
}

pub(super) fn c_string(field: &'static str, s: &str) -> Result<CString, SandboxError> {
    CString::new(s).map_err(|_| SandboxError::InvalidSpec {
        field,
        value: s.to_owned(),
        reason: "contains a NUL byte",
    })
}

/// `path` (absolute) as a path under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The host's device nodes given to every sandbox (those that exist).
fn devices() -> &'static [&'static str] {
    static DEVICES: OnceLock<Vec<&'static str>> = OnceLock::new();
    DEVICES.get_or_init(|| {
        ["null", "zero", "full", "random", "urandom", "tty"]
            .into_iter()
            .filter(|d| {
                fs::metadata(Path::new("/dev").join(d))
                    .is_ok_and(|m| m.file_type().is_char_device())
            })
            .collect()
    })
}

/// Creates an empty mount point on the host for `host` at `at`: a
/// directory for a directory, a file otherwise.
fn host_mount_point(host: &Path, at: &Path) -> Result<(), SandboxError> {
    let meta = fs::metadata(host).map_err(prep_err("stat", host))?;
    if meta.is_dir() {
        fs::create_dir(at).map_err(prep_err("create", at))
    } else {
        fs::File::create(at)
            .map(drop)
            .map_err(prep_err("create", at))
    }
}

/// Makes `dir` (or checks it is) a directory of ours that no other user
/// can enter. The outputs are written below it: a builder may make them
/// setuid (where the filter misses a way) or world-writable, and nobody
/// else may reach them before they are canonicalized.
fn private_dir(dir: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(prep_err("create", dir)(e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(prep_err("stat", dir))?;
    if !meta.is_dir() || meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(SandboxError::InvalidSpec {
            field: "chroot_dir",
            value: dir.display().to_string(),
            reason: "is not a directory of this user",
        });
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(prep_err("make private", dir))?;
    }
    Ok(())
}

/// Refuses a directory the builder sees (and may `chmod`) whose parent
/// lets other users in: they could then reach what the builder puts there.
fn check_private_parent(field: &'static str, dir: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().unwrap_or(dir);
    let meta = fs::metadata(parent).map_err(prep_err("stat", parent))?;
    if meta.mode() & 0o077 != 0 {
        return Err(SandboxError::InvalidSpec {
            field,
            value: dir.display().to_string(),
            reason: "is in a directory other users can enter (it must be mode 0700)",
        });
    }
    Ok(())
}

/// The steps that build the root on a tmpfs inside the sandbox.
struct RootLayout<'a> {
    root: &'a Path,
    ops: Vec<Op>,
    /// Directories created (or about to be) below the root.
    dirs: HashSet<PathBuf>,
}

impl RootLayout<'_> {
    /// Creates `inside` (absolute, as seen inside) and its parents.
    fn dir(&mut self, inside: &Path) -> Result<PathBuf, SandboxError> {
        let at = under(self.root, inside);
        if at != self.root && !self.dirs.contains(&at) {
            if let Some(parent) = inside.parent() {
                self.dir(parent)?;
            }
            self.ops.push(Op::Mkdir { path: c_path(&at)? });
            self.dirs.insert(at.clone());
        }
        Ok(at)
    }

    /// Binds `host` at `inside`, creating the mount point.
    fn bind(&mut self, host: &Path, inside: &Path) -> Result<(), SandboxError> {
        let meta = fs::metadata(host).map_err(prep_err("stat", host))?;
        let at = if meta.is_dir() {
            self.dir(inside)?
        } else {
            if let Some(parent) = inside.parent() {
                self.dir(parent)?;
            }
            let at = under(self.root, inside);
            self.ops.push(Op::Touch { path: c_path(&at)? });
            at
        };
        self.ops.push(Op::bind(host, &at)?);
        Ok(())
    }

    fn write(&mut self, inside: &str, contents: String) -> Result<(), SandboxError> {
        let at = under(self.root, Path::new(inside));
        self.ops.push(Op::Write {
            path: c_path(&at)?,
            contents: contents.into_bytes(),
        });
        Ok(())
    }

    fn symlink(&mut self, target: &str, inside: &str) -> Result<(), SandboxError> {
        let at = under(self.root, Path::new(inside));
        self.ops.push(Op::Symlink {
            target: c_string("symlink", target)?,
            path: c_path(&at)?,
        });
        Ok(())
    }
}

/// Prepares the host side (the store dir, with a mount point for each
/// input) and lists the steps the builder child takes, in order.
///
/// The root itself is a tmpfs mounted on `chroot_dir` inside the sandbox:
/// its directories, `/etc` files and mount points cost a microsecond each
/// there, against tens on the host's disk (where the caller would also
/// have to delete them), and the kernel frees it with the mount namespace.
/// Only the store dir is on the host, since the outputs must stay there.
pub(super) fn prepare_root(spec: &SandboxSpec) -> Result<Vec<Op>, SandboxError> {
    let root = spec.chroot_dir.as_path();
    private_dir(root)?;
    check_private_parent("build_dir", &spec.build_dir)?;
    let host_store = under(root, &spec.store_dir);
    fs::create_dir_all(&host_store).map_err(prep_err("create", &host_store))?;
    for name in &spec.inputs {
        let host = spec.store_root.join(name);
        let at = host_store.join(name);
        let meta = fs::symlink_metadata(&host).map_err(prep_err("stat input", &host))?;
        if meta.file_type().is_symlink() {
            // A bind mount would follow it; a copy is as read-only.
            let target = fs::read_link(&host).map_err(prep_err("read", &host))?;
            symlink(&target, &at).map_err(prep_err("create", &at))?;
        } else {
            host_mount_point(&host, &at)?;
        }
    }

    let mut layout = RootLayout {
        root,
        ops: vec![
            // Taken before the tmpfs hides it.
            Op::OpenTree {
                path: c_path(&host_store)?,
            },
            Op::Mount {
                src: c"root".into(),
                dst: c_path(root)?,
                fstype: Some(c"tmpfs".into()),
                flags: libc::MS_NOSUID | libc::MS_NODEV,
                data: Some(c"mode=0755,size=4m".into()),
            },
        ],
        dirs: Default::default(),
    };
    let store = layout.dir(&spec.store_dir)?;
    layout.ops.push(Op::MoveTree {
        dst: c_path(&store)?,
    });
    for name in &spec.inputs {
        let host = spec.store_root.join(name);
        if !fs::symlink_metadata(&host).is_ok_and(|m| m.file_type().is_symlink()) {
            layout.ops.push(Op::bind(&host, &store.join(name))?);
        }
    }

    let mut extras: Vec<(PathBuf, PathBuf)> = spec.extra_paths.clone();
    if spec.network {
        for file in ["/etc/resolv.conf", "/etc/services"] {
            if Path::new(file).exists() {
                extras.push((file.into(), file.into()));
            }
        }
    }
    layout.dir(Path::new("/etc"))?;
    let (uid, gid) = (spec.uid, spec.gid);
    layout.write(
        "/etc/passwd",
        format!(
            "bigtop:x:{uid}:{gid}:bigtop build user:{}:/noshell\n\
             nobody:x:65534:65534:nobody:/:/noshell\n",
            spec.build_dir_inside.display()
        ),
    )?;
    layout.write("/etc/group", format!("bigtop:x:{gid}:\nnogroup:x:65534:\n"))?;
    layout.write("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n".into())?;
    for (i, (host, inside)) in extras.iter().enumerate() {
        // The same library may come with two programs.
        if !extras[..i].contains(&(host.clone(), inside.clone())) {
            layout.bind(host, inside)?;
        }
    }

    for name in devices() {
        let dev = Path::new("/dev").join(name);
        layout.bind(&dev, &dev)?;
    }
    for (target, link) in [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        layout.symlink(target, link)?;
    }
    let shm = layout.dir(Path::new("/dev/shm"))?;
    let proc = layout.dir(Path::new("/proc"))?;
    let build = layout.dir(&spec.build_dir_inside)?;
    if !layout.dirs.contains(&under(root, Path::new("/tmp"))) {
        let inside = spec.build_dir_inside.to_string_lossy();
        layout.symlink(&inside, "/tmp")?;
    }

    // Everything so far read-only (device nodes too: the builder owns the
    // host's when the caller is root, and could chmod them), then the
    // store dir writable again.
    layout.ops.push(Op::SetAttr {
        path: c_path(root)?,
        recursive: true,
        set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
        clear: 0,
    });
    layout.ops.push(Op::SetAttr {
        path: c_path(&store)?,
        recursive: false,
        set: 0,
        clear: MOUNT_ATTR_RDONLY,
    });
    layout.ops.push(Op::bind(&spec.build_dir, &build)?);
    // Writable, so no setuid bit counts there (the store dir keeps the
    // root's nosuid; the filter refuses setting such bits anyway).
    layout.ops.push(Op::SetAttr {
        path: c_path(&build)?,
        recursive: false,
        set: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        clear: 0,
    });
    let nodev_nosuid = libc::MS_NOSUID | libc::MS_NODEV;
    layout.ops.push(Op::Mount {
        src: c"shm".into(),
        dst: c_path(&shm)?,
        fstype: Some(c"tmpfs".into()),
        flags: nodev_nosuid,
        data: Some(c"mode=1777,size=50%".into()),
    });
    layout.ops.push(Op::Mount {
        src: c"proc".into(),
        dst: c_path(&proc)?,
        fstype: Some(c"proc".into()),
        flags: nodev_nosuid | libc::MS_NOEXEC,
        data: None,
    });
    Ok(layout.ops)
}
