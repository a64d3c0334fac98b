use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::hash::HashAlgo;

/// An in-memory tree, the model NARs are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File { executable: bool, data: Vec<u8> },
    Link(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Node>),
}

fn encode(node: &Node) -> Vec<u8> {
    fn go(enc: &mut NarEncoder<&mut Vec<u8>>, name: Option<&[u8]>, node: &Node) {
        match node {
            Node::File { executable, data } => enc
                .file(name, *executable, data.len() as u64, &mut &data[..])
                .unwrap(),
            Node::Link(t) => enc.symlink(name, t).unwrap(),
            Node::Dir(entries) => {
                enc.directory(name).unwrap();
                for (n, child) in entries {
                    go(enc, Some(n), child);
                }
                enc.end_directory().unwrap();
            }
        }
    }
    let mut out = Vec::new();
    let mut enc = NarEncoder::new(&mut out);
    go(&mut enc, None, node);
    enc.finish().unwrap();
    out
}

/// A directory being collected: its name and the entries so far.
type OpenDir = (Option<Vec<u8>>, BTreeMap<Vec<u8>, Node>);

/// A sink that rebuilds the model.
#[derive(Default)]
struct Collect {
    stack: Vec<OpenDir>,
    root: Option<Node>,
}

impl Collect {
    fn put(&mut self, name: Option<&[u8]>, node: Node) {
        match self.stack.last_mut() {
            Some((_, entries)) => {
                entries.insert(name.unwrap().to_vec(), node);
            }
            None => self.root = Some(node),
        }
    }
}

impl NarSink for Collect {
    fn directory(&mut self, name: Option<&[u8]>) -> io::Result<()> {
        self.stack.push((name.map(<[u8]>::to_vec), BTreeMap::new()));
        Ok(())
    }
    fn end_directory(&mut self) -> io::Result<()> {
        let (name, entries) = self.stack.pop().unwrap();
        self.put(name.as_deref(), Node::Dir(entries));
        Ok(())
    }
    fn file(
        &mut self,
        name: Option<&[u8]>,
        executable: bool,
        _size: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()> {
        let mut data = Vec::new();
        contents.read_to_end(&mut data)?;
        self.put(name, Node::File { executable, data });
        Ok(())
    }
    fn symlink(&mut self, name: Option<&[u8]>, target: &[u8]) -> io::Result<()> {
        self.put(name, Node::Link(target.to_vec()));
        Ok(())
    }
}

fn decode(bytes: &[u8]) -> Result<Node, ReadError> {
    let mut c = Collect::default();
    parse(&mut &bytes[..], &mut c)?;
    Ok(c.root.unwrap())
}

fn file(data: &str) -> Node {
    Node::File {
        executable: false,
        data: data.as_bytes().to_vec(),
    }
}

fn dir<const N: usize>(entries: [(&str, Node); N]) -> Node {
    Node::Dir(
        entries
            .into_iter()
            .map(|(n, c)| (n.as_bytes().to_vec(), c))
            .collect(),
    )
}

fn sample() -> Node {
    dir([
        (
            "bin",
            dir([(
                "hello",
                Node::File {
                    executable: true,
                    data: b"#!/bin/sh\necho hello\n".to_vec(),
                },
            )]),
        ),
        ("empty", file("")),
        ("link", Node::Link(b"bin/hello".to_vec())),
        ("share", dir([])),
    ])
}

/// NAR strings, for building archives by hand.
fn s(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        out.extend_from_slice(p);
        out.resize(out.len() + padding(p.len() as u64), 0);
    }
    out
}

/// A directory archive whose single entry has `name` and is a file.
fn dir_with_entries(names: &[&[u8]]) -> Vec<u8> {
    let mut out = s(&[MAGIC, b"(", b"type", b"directory"]);
    for name in names {
        out.extend(s(&[
            b"entry",
            b"(",
            b"name",
            name,
            b"node",
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"x",
            b")",
            b")",
        ]));
    }
    out.extend(s(&[b")"]));
    out
}

fn write_tree(path: &Path, node: &Node) {
    use std::os::unix::ffi::OsStrExt;
    match node {
        Node::File { executable, data } => {
            std::fs::write(path, data).unwrap();
            let mode = if *executable { 0o755 } else { 0o644 };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        Node::Link(t) => std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(t), path).unwrap(),
        Node::Dir(entries) => {
            std::fs::create_dir(path).unwrap();
            for (n, child) in entries {
                write_tree(&path.join(std::ffi::OsStr::from_bytes(n)), child);
            }
        }
    }
}

fn hex_lines(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|c| {
            let hex: Vec<String> = c.iter().map(|b| format!("{b:02x}")).collect();
            let text: String = c
                .iter()
                .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
                .collect();
            format!("{:<48}{text}\n", hex.join(" "))
        })
        .collect()
}

#[test]
fn small_archive_snapshot() {
    let nar = encode(&dir([
        ("a", file("hi\n")),
        ("l", Node::Link(b"a".to_vec())),
    ]));
    insta::assert_snapshot!(hex_lines(&nar));
}

#[test]
fn dump_of_a_tree_equals_its_encoding_and_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    write_tree(&root, &sample());
    let mut dumped = Vec::new();
    let size = dump_path(&root, &mut dumped).unwrap();
    assert_eq!(dumped, encode(&sample()));
    assert_eq!(size, dumped.len() as u64);
    for algo in HashAlgo::ALL {
        let (h, n) = hash_path(&root, algo).unwrap();
        assert_eq!((h, n), (crate::Hash::digest(algo, &dumped), size));
    }
}

#[test]
fn hashing_past_one_chunk_uses_the_pipeline_and_agrees() {
    // Files large enough that the hasher thread starts, with sizes that do
    // not line up with chunk boundaries.
    let big: Vec<u8> = (0..3_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let tree = dir([
        (
            "a",
            Node::File {
                executable: false,
                data: big.clone(),
            },
        ),
        ("b", file("small")),
        (
            "c",
            Node::File {
                executable: true,
                data: big[..1_048_573].to_vec(),
            },
        ),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    write_tree(&root, &tree);
    let nar = encode(&tree);
    for algo in HashAlgo::ALL {
        assert_eq!(
            hash_path(&root, algo).unwrap(),
            (crate::Hash::digest(algo, &nar), nar.len() as u64)
        );
    }
}

#[test]
fn restore_then_dump_is_identity() {
    let nar = encode(&sample());
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out");
    restore(&mut &nar[..], &dest).unwrap();
    let meta = std::fs::metadata(dest.join("bin/hello")).unwrap();
    assert_ne!(meta.permissions().mode() & 0o100, 0);
    let mut again = Vec::new();
    dump_path(&dest, &mut again).unwrap();
    assert_eq!(again, nar);
}

#[test]
fn dump_rejects_sockets_and_fifos() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let err = dump_path(tmp.path(), io::sink()).unwrap_err();
    assert!(
        matches!(err, DumpError::UnsupportedType { kind: "socket", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("sock"), "{err}");
    let err = hash_path(Path::new("/nonexistent/bigtop"), HashAlgo::Blake3).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/bigtop"), "{err}");
}

#[test]
fn dump_refuses_fifos_without_blocking_and_absurd_depth() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let err = dump_path(tmp.path(), io::sink()).unwrap_err();
    assert!(
        matches!(err, DumpError::UnsupportedType { kind: "fifo", .. }),
        "{err}"
    );
    std::fs::remove_file(&fifo).unwrap();

    let deep = tmp.path().join("deep");
    std::fs::create_dir(&deep).unwrap();
    nest(&deep, MAX_DEPTH + 1, "d", b"");
    let err = dump_path(&deep, io::sink()).unwrap_err();
    assert!(matches!(err, DumpError::TooDeep { .. }), "{err}");
    // The temporary directory's own removal recurses, once per level.
    walk::remove_tree(&deep).unwrap();
}

/// Makes `depth` directories named `name` under `root` (which exists),
/// each in the one before, and in the last a file `leaf` holding `data`
/// (unless it is empty). By descriptors: the path soon passes `PATH_MAX`.
fn nest(root: &Path, depth: usize, name: &str, data: &[u8]) {
    use std::io::Write as _;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let name = std::ffi::CString::new(name).unwrap();
    let mut dir: OwnedFd = std::fs::File::open(root).unwrap().into();
    for _ in 0..depth {
        // SAFETY: an open directory and a NUL-terminated name.
        let next = unsafe {
            assert_eq!(libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755), 0);
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        assert!(next >= 0, "{}", io::Error::last_os_error());
        // SAFETY: just opened, owned by nobody else.
        dir = unsafe { OwnedFd::from_raw_fd(next) };
    }
    if !data.is_empty() {
        // SAFETY: an open directory and a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c"leaf".as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                0o644,
            )
        };
        assert!(fd >= 0, "{}", io::Error::last_os_error());
        // SAFETY: just opened, owned by nobody else.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        f.write_all(data).unwrap();
    }
}

/// The NAR of what [`nest`] makes, from events: the model a deep dump is
/// held to (the encoder keeps no stack but a name per level).
fn nested_nar(depth: usize, name: &str, data: &[u8]) -> Vec<u8> {
    let mut enc = NarEncoder::new(Vec::new());
    enc.directory(None).unwrap();
    for _ in 0..depth {
        enc.directory(Some(name.as_bytes())).unwrap();
    }
    if !data.is_empty() {
        enc.file(Some(b"leaf"), false, data.len() as u64, &mut &data[..])
            .unwrap();
    }
    for _ in 0..=depth {
        enc.end_directory().unwrap();
    }
    enc.finish().unwrap()
}

/// A builder can nest directories past `PATH_MAX`; walking them by path
/// failed (`File name too long`), so its output could be neither hashed
/// nor archived. 3,000 levels of `dd/` are a 9,000-byte path; the file at
/// the bottom is big enough for the two-thread hashing.
#[test]
fn trees_deeper_than_path_max_dump_and_hash_as_their_encoding() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("deep");
    std::fs::create_dir(&root).unwrap();
    let data: Vec<u8> = (0..2_500_003u32).map(|i| (i * 13 % 251) as u8).collect();
    nest(&root, 3000, "dd", &data);
    let expected = nested_nar(3000, "dd", &data);
    let mut dumped = Vec::new();
    assert_eq!(
        dump_path(&root, &mut dumped).unwrap(),
        expected.len() as u64
    );
    assert!(dumped == expected, "the dump differs from its encoding");
    for algo in HashAlgo::ALL {
        assert_eq!(
            hash_path(&root, algo).unwrap(),
            (crate::Hash::digest(algo, &expected), expected.len() as u64)
        );
    }
    walk::remove_tree(&root).unwrap();
}

/// Unpacking went by paths too: a NAR of such a tree could not be
/// restored, nor a failed unpack removed.
#[test]
fn trees_deeper_than_path_max_restore_and_dump_again() {
    let tmp = tempfile::tempdir().unwrap();
    let nar = nested_nar(3000, "dd", b"bottom\n");
    let dest = tmp.path().join("copy");
    restore(&mut &nar[..], &dest).unwrap();
    let mut again = Vec::new();
    dump_path(&dest, &mut again).unwrap();
    assert!(again == nar, "the restored tree dumps differently");
    walk::remove_tree(&dest).unwrap();
    assert!(!dest.exists());

    // Cut short some hundred levels above the bottom: what was unpacked
    // goes again.
    let cut = &nar[..nar.len() - 120_000];
    let err = restore(&mut &cut[..], &dest).unwrap_err();
    assert!(matches!(err, ReadError::Truncated { .. }), "{err}");
    assert!(!dest.exists(), "a failed unpack left its tree");
}

/// Nothing recurses: 10,000 levels dump, hash, unpack and go again on a
/// thread with a 256 KiB stack.
#[test]
fn ten_thousand_levels_fit_a_small_stack() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("deep");
    std::fs::create_dir(&root).unwrap();
    nest(&root, 10_000, "d", b"x");
    let expected = nested_nar(10_000, "d", b"x");
    let copy = tmp.path().join("copy");
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let (h, n) = hash_path(&root, HashAlgo::Blake3).unwrap();
            assert_eq!(
                (h, n),
                (
                    crate::Hash::digest(HashAlgo::Blake3, &expected),
                    expected.len() as u64
                )
            );
            restore(&mut &expected[..], &copy).unwrap();
            let mut again = Vec::new();
            dump_path(&copy, &mut again).unwrap();
            assert!(again == expected, "the restored tree dumps differently");
            walk::remove_tree(&copy).unwrap();
            walk::remove_tree(&root).unwrap();
            assert!(!copy.exists() && !root.exists());
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn parse_stops_at_the_end_of_the_archive() {
    let mut stream = encode(&sample());
    stream.extend_from_slice(b"TRAILER");
    let mut r = &stream[..];
    parse(&mut r, &mut Collect::default()).unwrap();
    assert_eq!(r, b"TRAILER");
}

#[test]
fn rejects_bad_names() {
    for (name, reason) in [
        (&b".."[..], "`.` and `..` are not allowed"),
        (b".", "`.` and `..` are not allowed"),
        (b"a/b", "it contains `/`"),
        (b"/", "it contains `/`"),
        (b"a\0b", "it contains NUL"),
        (b"", "it is empty"),
    ] {
        match decode(&dir_with_entries(&[name])) {
            Err(ReadError::BadName { reason: r, .. }) => assert_eq!(r, reason, "{name:?}"),
            other => panic!("{name:?}: {other:?}"),
        }
    }
}

#[test]
fn rejects_unsorted_and_duplicate_entries() {
    for names in [&[&b"b"[..], b"a"][..], &[b"a", b"a"], &[b"a", b"c", b"b"]] {
        let err = decode(&dir_with_entries(names)).unwrap_err();
        assert!(
            matches!(err, ReadError::Unsorted { .. }),
            "{names:?}: {err}"
        );
    }
    // Sorting is by bytes: upper case before lower case.
    decode(&dir_with_entries(&[b"B", b"a"])).unwrap();
}

#[test]
fn rejects_absurd_lengths_without_allocating_them() {
    let mut nar = s(&[MAGIC, b"(", b"type", b"directory", b"entry", b"(", b"name"]);
    nar.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let err = decode(&nar).unwrap_err();
    assert!(
        matches!(err, ReadError::TooLong { what: "entry name", len, .. } if len == 1 << 60),
        "{err}"
    );

    let mut nar = s(&[MAGIC]);
    nar.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        decode(&nar).unwrap_err(),
        ReadError::Unexpected { .. }
    ));

    let mut nar = s(&[MAGIC, b"(", b"type", b"symlink", b"target"]);
    nar.extend_from_slice(&5000u64.to_le_bytes());
    assert!(matches!(
        decode(&nar).unwrap_err(),
        ReadError::TooLong {
            what: "symlink target",
            ..
        }
    ));

    // A file claiming an exabyte of contents is streamed, so it ends as a
    // truncated archive rather than an allocation.
    let mut nar = s(&[MAGIC, b"(", b"type", b"regular", b"contents"]);
    nar.extend_from_slice(&(1u64 << 60).to_le_bytes());
    nar.extend_from_slice(b"abc");
    assert!(
        matches!(decode(&nar).unwrap_err(), ReadError::Truncated { offset } if offset == nar.len() as u64)
    );
}

#[test]
fn rejects_every_truncation() {
    let nar = encode(&sample());
    let tmp = tempfile::tempdir().unwrap();
    for cut in 0..nar.len() {
        let err = decode(&nar[..cut]).unwrap_err();
        assert!(
            matches!(err, ReadError::Truncated { .. }),
            "cut at {cut}: {err}"
        );
        let dest = tmp.path().join(format!("cut{cut}"));
        assert!(restore(&mut &nar[..cut], &dest).is_err());
        assert!(!dest.exists(), "a failed restore left {}", dest.display());
    }
}

#[test]
fn rejects_bad_magic_padding_tokens_and_targets() {
    assert!(matches!(
        decode(&s(&[b"nix-archive-2"])).unwrap_err(),
        ReadError::Unexpected { .. }
    ));
    let mut nar = s(&[MAGIC, b"(", b"type", b"regular", b"contents", b"abc", b")"]);
    let pad_at = s(&[MAGIC, b"(", b"type", b"regular", b"contents"]).len() + 8 + 3;
    nar[pad_at] = 1;
    assert!(
        matches!(decode(&nar).unwrap_err(), ReadError::BadPadding { offset } if offset == pad_at as u64)
    );
    let nar = s(&[MAGIC, b"(", b"type", b"fifo", b")"]);
    let err = decode(&nar).unwrap_err();
    assert!(err.to_string().contains("`fifo`"), "{err}");
    for (target, reason) in [(&b""[..], "it is empty"), (b"a\0b", "it contains NUL")] {
        let nar = s(&[MAGIC, b"(", b"type", b"symlink", b"target", target, b")"]);
        assert!(
            matches!(decode(&nar).unwrap_err(), ReadError::BadTarget { reason: r, .. } if r == reason)
        );
    }
}

#[test]
fn rejects_absurd_nesting() {
    let mut nar = s(&[MAGIC]);
    for _ in 0..=MAX_DEPTH {
        nar.extend(s(&[
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"d",
            b"node",
        ]));
    }
    nar.extend(s(&[b"(", b"type", b"directory"]));
    assert!(matches!(
        decode(&nar).unwrap_err(),
        ReadError::TooDeep { .. }
    ));
}

#[test]
fn restore_cannot_be_steered_outside_its_target() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    // `a` is a symlink to a directory outside; a second `a` entry would
    // write through it if the unpacker followed it.
    let mut nar = s(&[MAGIC, b"(", b"type", b"directory"]);
    let target = outside.to_str().unwrap().as_bytes();
    nar.extend(s(&[
        b"entry", b"(", b"name", b"a", b"node", b"(", b"type", b"symlink", b"target", target, b")",
        b")",
    ]));
    nar.extend(s(&[
        b"entry",
        b"(",
        b"name",
        b"a",
        b"node",
        b"(",
        b"type",
        b"directory",
    ]));
    nar.extend(s(&[
        b"entry",
        b"(",
        b"name",
        b"x",
        b"node",
        b"(",
        b"type",
        b"regular",
        b"contents",
        b"pwned",
        b")",
        b")",
    ]));
    nar.extend(s(&[b")", b")", b")"]));
    let dest = tmp.path().join("dest");
    let err = restore(&mut &nar[..], &dest).unwrap_err();
    assert!(matches!(err, ReadError::Unsorted { .. }), "{err}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!dest.exists());

    // An existing destination is never written into, nor removed.
    std::fs::create_dir(&dest).unwrap();
    let err = restore(&mut &encode(&sample())[..], &dest).unwrap_err();
    assert!(
        matches!(&err, ReadError::Sink { path, .. } if path == "/"),
        "{err}"
    );
    assert!(dest.is_dir());

    // A symlink at the destination is not followed either.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    assert!(restore(&mut &encode(&file("x"))[..], &link).is_err());
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn encoder_refuses_invalid_event_sequences() {
    let mut enc = NarEncoder::new(Vec::new());
    assert!(matches!(
        enc.file(Some(b"x"), false, 0, &mut io::empty()),
        Err(EncodeError::OutOfPlace(_))
    ));
    enc.directory(None).unwrap();
    assert!(matches!(
        enc.symlink(None, b"t"),
        Err(EncodeError::OutOfPlace(_))
    ));
    enc.symlink(Some(b"b"), b"t").unwrap();
    assert!(matches!(
        enc.symlink(Some(b"a"), b"t"),
        Err(EncodeError::Unsorted { .. })
    ));
    assert!(matches!(
        enc.symlink(Some(b".."), b"t"),
        Err(EncodeError::BadName { .. })
    ));
    for target in [&b""[..], b"a\0b", &[b'x'; 4096]] {
        assert!(matches!(
            enc.symlink(Some(b"z"), target),
            Err(EncodeError::BadTarget { .. })
        ));
    }
    assert!(matches!(
        enc.file(Some(b"c"), false, 10, &mut &b"short"[..]),
        Err(EncodeError::ShortContents { got: 5, size: 10 })
    ));
    let mut enc = NarEncoder::new(Vec::new());
    enc.directory(None).unwrap();
    assert!(matches!(enc.finish(), Err(EncodeError::OutOfPlace(_))));
}

fn arb_name() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
        1..12,
    )
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn arb_node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(executable, data)| Node::File { executable, data }),
        proptest::collection::vec(1u8..=255, 1..40).prop_map(Node::Link),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        proptest::collection::btree_map(arb_name(), inner, 0..6).prop_map(Node::Dir)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn write_read_write_is_identical(node in arb_node()) {
        let nar = encode(&node);
        prop_assert_eq!(decode(&nar).unwrap(), node.clone());
        let mut again = Vec::new();
        parse(&mut &nar[..], &mut NarEncoder::new(&mut again)).unwrap();
        prop_assert_eq!(&again, &nar);
    }

    #[test]
    fn restore_and_dump_round_trip(node in arb_node()) {
        let nar = encode(&node);
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("r");
        restore(&mut &nar[..], &dest).unwrap();
        let mut dumped = Vec::new();
        dump_path(&dest, &mut dumped).unwrap();
        prop_assert_eq!(dumped, nar);
    }
}

proptest! {
    /// A file's NAR hashed from its bytes is the one hashed from disk.
    #[test]
    fn a_file_hashed_from_its_bytes_matches_the_file_on_disk(
        contents in proptest::collection::vec(any::<u8>(), 0..300),
        executable: bool,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, &contents).unwrap();
        let mode = if executable { 0o555 } else { 0o444 };
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
        for algo in HashAlgo::ALL {
            prop_assert_eq!(
                hash_file_bytes(&contents, executable, algo),
                hash_path(&f, algo).unwrap()
            );
        }
    }
}
