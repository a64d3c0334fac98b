//! The system call filter every sandboxed builder runs under: no file can
//! gain a setuid or setgid bit, extended attributes (ACLs, file
//! capabilities) cannot be set, and `io_uring`, which would open files
//! behind the filter's back, is absent.
//!
//! A setuid file made by a builder is owned by the store's owner on the
//! host (root, when bigtop runs as root): if any user could run it while
//! the build lasts, it would be a way to that owner's rights. Outputs are
//! canonicalized after the build, and the scratch area is private; this
//! filter is the third wall, as in Nix's sandbox. The calls are refused
//! with `EPERM` (mode bits), `ENOTSUP` (attributes, as a file system
//! without them answers) or `ENOSYS` (calls whose arguments a filter
//! cannot read, so that programs fall back to the plain ones).
//!
//! The filter is classic BPF, written out here: it is a few dozen
//! instructions, and a library for it would cost more than it saves.

/// One BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Instruction {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// `struct sock_fprog`: what `PR_SET_SECCOMP` takes.
#[repr(C)]
pub(crate) struct Program {
    len: u16,
    filter: *const Instruction,
}

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// The low 32 bits of argument `i` (little-endian machines).
const fn data_arg(i: u32) -> u32 {
    16 + 8 * i
}

const S_ISUID_ISGID: u32 = 0o6000;
/// `O_CREAT | __O_TMPFILE`: the flags with which `open` uses its mode.
const O_CREATES: u32 = 0o100 | 0o20_000_000;

/// How the filter treats one system call.
#[derive(Clone, Copy)]
enum Rule {
    /// Refused with `EPERM` when argument `mode` has S_ISUID or S_ISGID,
    /// and (if given) argument `flags` creates a file.
    Mode {
        nr: u32,
        mode: u32,
        flags: Option<u32>,
    },
    /// Always refused with this errno.
    Refuse { nr: u32, errno: i32 },
}

/// System calls numbered the same on every architecture since Linux 5.1.
const OPENAT2: u32 = 437;
const FCHMODAT2: u32 = 452;
const SETXATTRAT: u32 = 463;
const IO_URING_SETUP: u32 = 425;
const IO_URING_ENTER: u32 = 426;
const IO_URING_REGISTER: u32 = 427;

fn common_rules(
    fchmod: u32,
    fchmodat: u32,
    openat: u32,
    mknodat: u32,
    mkdirat: u32,
    xattr: [u32; 3],
) -> Vec<Rule> {
    let mut rules = vec![
        Rule::Mode {
            nr: fchmod,
            mode: 1,
            flags: None,
        },
        Rule::Mode {
            nr: fchmodat,
            mode: 2,
            flags: None,
        },
        Rule::Mode {
            nr: FCHMODAT2,
            mode: 2,
            flags: None,
        },
        Rule::Mode {
            nr: openat,
            mode: 3,
            flags: Some(2),
        },
        Rule::Mode {
            nr: mknodat,
            mode: 2,
            flags: None,
        },
        Rule::Mode {
            nr: mkdirat,
            mode: 2,
            flags: None,
        },
    ];
    for nr in [OPENAT2, IO_URING_SETUP, IO_URING_ENTER, IO_URING_REGISTER] {
        rules.push(Rule::Refuse {
            nr,
            errno: libc::ENOSYS,
        });
    }
    for nr in xattr.into_iter().chain([SETXATTRAT]) {
        rules.push(Rule::Refuse {
            nr,
            errno: libc::ENOTSUP,
        });
    }
    rules
}

/// The calls of the older, path-only forms (x86 has them, arm64 not).
fn legacy_rules(chmod: u32, open: u32, creat: u32, mknod: u32, mkdir: u32) -> [Rule; 5] {
    [
        Rule::Mode {
            nr: chmod,
            mode: 1,
            flags: None,
        },
        Rule::Mode {
            nr: open,
            mode: 2,
            flags: Some(1),
        },
        Rule::Mode {
            nr: creat,
            mode: 1,
            flags: None,
        },
        Rule::Mode {
            nr: mknod,
            mode: 1,
            flags: None,
        },
        Rule::Mode {
            nr: mkdir,
            mode: 1,
            flags: None,
        },
    ]
}

/// `(AUDIT_ARCH_*, mask applied to the number, rules)` for each ABI a
/// builder may use on this machine.
fn abis() -> Vec<(u32, u32, Vec<Rule>)> {
    let mut abis = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        // x32 calls are the x86-64 numbers with this bit set.
        const X32_BIT: u32 = 0x4000_0000;
        let mut native = common_rules(91, 268, 257, 259, 258, [188, 189, 190]);
        native.extend(legacy_rules(90, 2, 85, 133, 83));
        abis.push((AUDIT_ARCH_X86_64, !X32_BIT, native));
        let mut i386 = common_rules(94, 306, 295, 297, 296, [226, 227, 228]);
        i386.extend(legacy_rules(15, 5, 8, 14, 39));
        abis.push((AUDIT_ARCH_I386, !0, i386));
    }
    #[cfg(target_arch = "aarch64")]
    {
        const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
        abis.push((
            AUDIT_ARCH_AARCH64,
            !0,
            common_rules(52, 53, 56, 33, 34, [5, 6, 7]),
        ));
    }
    abis
}

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> Instruction {
    Instruction { code, jt, jf, k }
}

fn rule_body(rule: Rule) -> Vec<Instruction> {
    match rule {
        Rule::Mode { mode, flags, .. } => {
            let mut body = Vec::new();
            if let Some(flags) = flags {
                body.push(ins(BPF_LD_W_ABS, 0, 0, data_arg(flags)));
                body.push(ins(BPF_AND_K, 0, 0, O_CREATES));
                // Not creating: the mode is unused; on to the allow below.
                body.push(ins(BPF_JEQ_K, 3, 0, 0));
            }
            body.push(ins(BPF_LD_W_ABS, 0, 0, data_arg(mode)));
            body.push(ins(BPF_AND_K, 0, 0, S_ISUID_ISGID));
            body.push(ins(BPF_JEQ_K, 0, 1, 0));
            body.push(ins(BPF_RET_K, 0, 0, RET_ALLOW));
            body.push(ins(BPF_RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32));
            body
        }
        Rule::Refuse { errno, .. } => vec![ins(BPF_RET_K, 0, 0, RET_ERRNO | errno as u32)],
    }
}

/// The filter's instructions. Every other architecture than those listed
/// is refused outright (`ENOSYS`): a builder could otherwise reach the
/// same calls under numbers the filter does not check.
pub(crate) fn filter() -> Vec<Instruction> {
    let mut out = Vec::new();
    for (arch, mask, rules) in abis() {
        let mut block = vec![ins(BPF_LD_W_ABS, 0, 0, DATA_NR)];
        if mask != !0 {
            block.push(ins(BPF_AND_K, 0, 0, mask));
        }
        for rule in rules {
            let nr = match rule {
                Rule::Mode { nr, .. } | Rule::Refuse { nr, .. } => nr,
            };
            let body = rule_body(rule);
            let skip = u8::try_from(body.len()).expect("a rule is a few instructions");
            block.push(ins(BPF_JEQ_K, 0, skip, nr));
            block.extend(body);
        }
        block.push(ins(BPF_RET_K, 0, 0, RET_ALLOW));
        out.push(ins(BPF_LD_W_ABS, 0, 0, DATA_ARCH));
        let skip = u8::try_from(block.len()).expect("an architecture's block fits a jump");
        out.push(ins(BPF_JEQ_K, 0, skip, arch));
        out.extend(block);
    }
    out.push(ins(BPF_RET_K, 0, 0, RET_ERRNO | libc::ENOSYS as u32));
    out
}

impl Program {
    /// Points at `filter`, which must outlive every use of the program.
    pub(crate) fn new(filter: &[Instruction]) -> Program {
        Program {
            len: u16::try_from(filter.len()).expect("a filter of a few hundred instructions"),
            filter: filter.as_ptr(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_inside_the_program() {
        let f = filter();
        assert!(f.len() < 4096, "the kernel's limit");
        for (i, insn) in f.iter().enumerate() {
            if insn.code == BPF_JEQ_K {
                assert!(i + 1 + usize::from(insn.jt) < f.len());
                assert!(i + 1 + usize::from(insn.jf) < f.len());
            }
        }
        assert_eq!(f.last().map(|i| i.code), Some(BPF_RET_K));
    }
}
