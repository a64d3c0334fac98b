#!/usr/bin/env bash
# Where the builder spends its time, for the cases of compare-nix-build.sh:
# `perf` profiles of `build-bench` on fresh stores, on-CPU and off-CPU.
#
#   benches/profile-build.sh [trivial|builtin|noop ...]   (default: all three)
#     trivial  N trivial derivations + 1, unsandboxed, 2 jobs
#     builtin  N builtin text files + 1
#     noop     the no-op rebuild of the built N graph (sandboxed store), 20 times
#     env: N (10000), PROFILE_DIR (a new dir in the target dir), KEEP=1
#
# For each case it prints
#   - on-CPU: `perf record -c 1000000` (a sample a millisecond of CPU, DWARF
#     call graphs; a fixed period, since frequency mode undercounts the
#     thousands of short-lived children) of the process and its children,
#     as the self time of the hottest symbols (`perf report --no-children`)
#     and the inclusive time of bigtop's functions;
#   - off-CPU: every context switch of the process's threads, recorded
#     system-wide (`sched:sched_switch`, filtered on the comm) with its
#     stack, and the time until the thread ran again, summed per function
#     (inclusive): where the threads wait (fsync, syncfs, child processes).
# Both sum over threads: with several threads the total exceeds the wall
# time, and a thread parked on a channel counts as waiting.
#
# Needs perf (apt-get install linux-perf) and root (system-wide tracepoints).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "error: \`perf\` not found (apt-get install linux-perf)" >&2; exit 1; }
cargo build --release -q -p bigtop-benches
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bb=$target/release/build-bench
n=${N:-10000}
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(trivial builtin noop)
work=${PROFILE_DIR:-$(mktemp -d "$target/build-profile.XXXXXX")}
mkdir -p "$work"
cleanup() { [ "${KEEP:-}" = 1 ] || rm -rf "$work"; }
trap cleanup EXIT
echo "working in $work"

cat > "$work/wall.py" <<'PY'
# Reads `perf script -F comm,tid,time,event,trace,period,ip,sym` (stdin):
# cpu-clock samples weigh their period; a sched_switch of a thread named
# COMM weighs the time until a later switch brings the same thread back.
# Prints, per thread role (the scheduler, the registrar, the build workers,
# child processes), the inclusive time of each function matching PATTERN.
import collections, re, sys
comm_wanted, pattern = sys.argv[1], re.compile(sys.argv[2])
head = re.compile(r'^(\S.*?)\s+(\d+)\s+([\d.]+):\s+(\d+\s+)?(\S+):\s*(.*)$')
switch = re.compile(r'prev_comm=(.*?) prev_pid=(\d+) .*==> next_comm=.*? next_pid=(\d+)')
events, cur = [], None
for line in sys.stdin:
    line = line.rstrip('\n')
    if not line:
        continue
    if not line[0].isspace():
        m = head.match(line)
        cur = None
        if m:
            comm, tid, t, period, ev, trace = m.groups()
            cur = (int(tid), float(t), ev, trace, int(period or 0), [], comm)
            events.append(cur)
    elif cur is not None:
        parts = line.split(None, 1)
        if len(parts) == 2:
            sym = re.sub(r'\+0x[0-9a-f]+| \(inlined\)$', '', parts[1])
            cur[5].append(re.sub(r' \([^)]*\)$', '', sym))
ROLES = [('scheduler (main thread)', 'build_bench::main'),
         ('registrar thread', 'bigtop_store::build::run::Builder::register'),
         ('build workers', 'bigtop_store::build::run::Builder::run_job'),
         ('vfork children, until exec', '__spawni_child')]
def role_of(frames):
    for name, mark in ROLES:
        if mark in frames:
            return name
    return None
weights = collections.defaultdict(collections.Counter)
totals = collections.Counter()
role = {}  # tid -> role, from the first stack that tells
samples = []  # (tid, weight, frames)
out, back_in, running = {}, {}, collections.Counter()
for tid, t, ev, trace, period, frames, comm in events:
    if ev.startswith('cpu-clock'):
        samples.append((tid if comm == comm_wanted else comm, period / 1e9, frames))
    elif ev == 'sched:sched_switch':
        m = switch.search(trace)
        if not m:
            continue
        prev, nxt = int(m.group(2)), int(m.group(3))
        if prev in back_in:
            running[prev] += t - back_in.pop(prev)
        back = out.pop(nxt, None)
        if back:
            samples.append((nxt, t - back[0], back[1]))
            back_in[nxt] = t
        if m.group(1) == comm_wanted:
            out[prev] = (t, frames)
for tid, w, frames in samples:
    if tid not in role:
        r = role_of(frames) if isinstance(tid, int) else f'child processes ({tid})'
        if r:
            role[tid] = r
for tid, w, frames in samples:
    r = role.get(tid, 'other threads')
    totals[r] += w
    for f in set(frames):
        weights[r][f] += w
grand = sum(totals.values())
print(f"   total {grand:.3f} s, summed over threads")
ran = collections.Counter()
for tid, w in running.items():
    ran[role.get(tid, 'other threads')] += w
for r, tot in totals.most_common():
    busy = f", running {ran[r]:.3f} s between its switches" if ran[r] else ""
    print(f"   -- {r}: {tot:.3f} s ({100 * tot / grand:.1f}%){busy}; inclusive, % of the role:")
    shown = 0
    for f, w in weights[r].most_common():
        if pattern.search(f) and shown < 18 and w / tot >= 0.005:
            print(f"  {100 * w / tot:6.2f}%  {w:8.3f} s  {f[:150]}")
            shown += 1
PY
# Functions worth naming: ours, SQLite's entry, and the system calls that wait.
ours='^(bigtop|build_bench|<bigtop|sqlite3_step$|__spawni_child$|__do_sys_(clone3|waitid)$|__x64_sys_(fsync|syncfs|rename|unlink|rmdir|openat|mkdir|statx|wait4|waitid|execve|exit_group|futex|munmap|write|read)$)'

# `store CASE DIR`: a fresh store for the case (built already, for noop).
# Nothing is deleted before the timing is over: on an ext4 without a
# journal, creating inodes right after many were deleted is several times
# slower (see compare-nix-store.sh).
store() {
  case $1 in
    trivial) "$bb" init --store "$2" --no-sandbox ;;
    builtin) "$bb" init --store "$2" ;;
    noop) "$bb" trivial "$n" --store "$2" -j 2 > /dev/null ;;
  esac
  sync
}
cmd() { # CASE DIR
  case $1 in
    trivial) echo "'$bb' trivial $n --store '$2' --no-sandbox -j 2" ;;
    builtin) echo "'$bb' builtin $n --store '$2'" ;;
    noop) echo "for i in \$(seq 20); do '$bb' trivial $n --store '$2' -j 2; done" ;;
  esac
}

for c in "${cases[@]}"; do
  case $c in trivial|builtin|noop) ;; *) echo "error: unknown case \`$c\`" >&2; exit 1 ;; esac
  echo; echo "==== $c (N = $n), $(uptime | sed 's/.*load/load/')"
  on=$(mktemp -d "$work/$c-on.XXXXXX") off=$(mktemp -d "$work/$c-off.XXXXXX")
  store "$c" "$on"
  store "$c" "$off"
  perf record -q -e cpu-clock -c 1000000 --call-graph dwarf,16384 -o "$on.data" -- sh -c "$(cmd "$c" "$on")"
  perf record -q -a -e sched:sched_switch \
    --filter 'prev_comm == "build-bench" || next_comm == "build-bench"' \
    --call-graph dwarf,16384 -o "$off.data" -- sh -c "$(cmd "$c" "$off")"

  echo; echo "== $c: on-CPU, self, by command and symbol"
  perf report -i "$on.data" --no-children --sort comm,dso,sym --stdio -q --percent-limit 0.7 -g none 2>/dev/null | sed 's/ *$//' | grep . | head -30
  echo; echo "== $c: on-CPU, inclusive"
  perf script -i "$on.data" -F comm,tid,time,event,period,ip,sym 2>/dev/null | python3 "$work/wall.py" build-bench "$ours"
  echo; echo "== $c: off-CPU, inclusive"
  perf script -i "$off.data" -F comm,tid,time,event,trace,ip,sym 2>/dev/null | python3 "$work/wall.py" build-bench "$ours"
done
