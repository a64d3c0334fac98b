#!/usr/bin/env bash
# Side by side, in one run: the builder targets, bigtop (`build-bench`, one
# build per process, adding the derivations to the store included) against
# Nix 2.8 (`nix-build` of benches/nix/trivial.nix, Debian's nix-bin) on
# fresh chroot stores, 2 jobs on both sides:
#
#   1. N trivial derivations (`/bin/sh -c 'echo i > $out'`) plus one that
#      depends on all of them, for N = 1,000 and 10,000, sandboxed (Nix:
#      `sandbox = true`, `/bin /lib /lib64 /usr` as extra sandbox paths;
#      bigtop sees the same host paths) and unsandboxed (both sides on a
#      store whose logical dir is its physical one, since unsandboxed
#      builders write at the logical paths);
#   2. the same N processes spawned with no store at all, 2 at a time
#      (`build-bench spawn`): the floor of the unsandboxed builds;
#   3. 10,000 `builtin:write-file` derivations plus one on top (bigtop only);
#   4. a no-op rebuild of the built 10,000 graph (the sandboxed store of the
#      last run of 1.): `nix-build` again, and `build-bench` again — each
#      evaluates (adds its derivations, all valid) and then finds nothing
#      to build. bigtop's build call alone is timed inside the binary.
#
# Every run that builds gets a fresh store, made by hyperfine's `--prepare`
# (and synced). Nothing is deleted until the timing is over (see
# compare-nix-store.sh: on an ext4 without a journal, creating inodes right
# after many were deleted is several times slower).
#
#   benches/compare-nix-build.sh
#     env: RUNS (10), SLOW_RUNS (3: Nix at 10,000, about 25 minutes a run),
#     BENCH_DIR (a new dir in the target dir), KEEP=1 (keep it), N_SMALL
#     (1000), N_BIG (10000), NIX_BIG ("sandboxed unsandboxed": which Nix
#     runs at N_BIG; SKIP_NIX_BIG=1 means none). The Nix no-op peer needs
#     a Nix run at N_BIG (the sandboxed one if both).
#
# Needs hyperfine, nix-bin and python3, and root (or unprivileged user
# namespaces) for the sandboxes. Prints hyperfine's tables and the medians
# and ratios the README quotes.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in hyperfine nix-build nix-store python3; do
  command -v "$tool" >/dev/null || { echo "error: \`$tool\` not found (apt-get install hyperfine nix-bin python3)" >&2; exit 1; }
done
# No daemon, no build users (Nix 2.8 then sandboxes in a user namespace,
# as uid 1000 mapped to the caller), no substituters, no network.
base=$'build-users-group =\nsubstituters =\nexperimental-features = nix-command'
export NIX_SANDBOXED="$base"$'\nsandbox = true\nsandbox-fallback = false\nextra-sandbox-paths = /bin /lib /lib64 /usr'
export NIX_UNSANDBOXED="$base"$'\nsandbox = false'

cargo build --release -q -p bigtop-benches
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bb=$target/release/build-bench
expr=$PWD/benches/nix/trivial.nix
runs=${RUNS:-10}
slow_runs=${SLOW_RUNS:-3}
n_small=${N_SMALL:-1000}
n_big=${N_BIG:-10000}
nix_big=${NIX_BIG:-sandboxed unsandboxed}
[ "${SKIP_NIX_BIG:-}" != 1 ] || nix_big=

# On the same file system as the build, not a tmpfs: a store lives on disk.
mkdir -p "$target"
work=${BENCH_DIR:-$(mktemp -d "$target/build-bench.XXXXXX")}
mkdir -p "$work/runs"
cleanup() { [ "${KEEP:-}" = 1 ] || rm -rf "$work"; }
trap cleanup EXIT
echo "working in $work"
echo "load: $(uptime)"

# `fresh.sh KIND` makes a new empty store (or directory) and writes its
# directory to $work/cur for the timed command.
cat > "$work/fresh.sh" <<EOF
#!/usr/bin/env bash
set -euo pipefail
n=\$(( \$(cat "$work/counter" 2>/dev/null || echo 0) + 1 ))
echo "\$n" > "$work/counter"
dir="$work/runs/\$1-\$n"
case \$1 in
  ours-sb) "$bb" init --store "\$dir" ;;
  ours-nosb) "$bb" init --store "\$dir" --no-sandbox ;;
  nix-sb) NIX_CONFIG="\$NIX_SANDBOXED" nix-store --store "\$dir" --load-db < /dev/null ;;
  nix-nosb) NIX_CONFIG="\$NIX_UNSANDBOXED" nix-store --store "local?store=\$dir/store&state=\$dir/var&log=\$dir/log" --load-db < /dev/null ;;
  spawn) mkdir -p "\$dir" ;;
  *) echo "fresh.sh: unknown kind \$1" >&2; exit 1 ;;
esac
echo "\$dir" > "$work/cur"
sync
EOF
# `nix.sh sb|nosb N DIR`: nix-build of the N graph into the store at DIR.
cat > "$work/nix.sh" <<EOF
#!/usr/bin/env bash
set -euo pipefail
case \$1 in
  sb) export NIX_CONFIG="\$NIX_SANDBOXED"; store="\$3" ;;
  nosb) export NIX_CONFIG="\$NIX_UNSANDBOXED"; store="local?store=\$3/store&state=\$3/var&log=\$3/log" ;;
esac
exec nix-build --store "\$store" "$expr" --arg n "\$2" -j 2 --no-out-link --quiet > /dev/null
EOF
fresh="bash '$work/fresh.sh'"
nix="bash '$work/nix.sh'"
cur="\"\$(cat '$work/cur')\""

# The top output of the last run holds N: it saw every input.
check_top() { # DIR-of-store-paths N
  local got
  got=$(cat "$1"/*-trivial-all)
  [ "$got" = "$2" ] || { echo "error: the top output in $1 holds \`$got\`, not $2" >&2; exit 1; }
}
last() { cat "$work/cur"; }

json=$work/json
mkdir -p "$json"
hf() { hyperfine --warmup 1 --runs "$runs" "$@"; }
hf_slow() { hyperfine --warmup 0 --runs "$slow_runs" "$@"; }

for n in $n_small $n_big; do
  echo; echo "== 1. $n trivial derivations + 1, sandboxed, 2 jobs"
  hf --export-json "$json/ours-sb-$n.json" \
    --prepare "$fresh ours-sb" -n "bigtop trivial $n sandboxed" "'$bb' trivial $n --store $cur -j 2 > /dev/null"
  if [ "$n" = "$n_small" ]; then
    hf --export-json "$json/nix-sb-$n.json" \
      --prepare "$fresh nix-sb" -n "nix-build trivial $n sandboxed" "$nix sb $n $cur"
    check_top "$(last)/nix/store" "$n"
  elif [[ " $nix_big " == *" sandboxed "* ]]; then
    hf_slow --export-json "$json/nix-sb-$n.json" \
      --prepare "$fresh nix-sb" -n "nix-build trivial $n sandboxed" "$nix sb $n $cur"
    check_top "$(last)/nix/store" "$n"
    echo "sb $(last)" > "$work/noop-nix"
  fi

  echo; echo "== 1. $n trivial derivations + 1, unsandboxed, 2 jobs"
  hf --export-json "$json/ours-nosb-$n.json" \
    --prepare "$fresh ours-nosb" -n "bigtop trivial $n unsandboxed" "'$bb' trivial $n --store $cur --no-sandbox -j 2 > /dev/null"
  check_top "$(last)/store" "$n"
  if [ "$n" = "$n_small" ]; then
    hf --export-json "$json/nix-nosb-$n.json" \
      --prepare "$fresh nix-nosb" -n "nix-build trivial $n unsandboxed" "$nix nosb $n $cur"
    check_top "$(last)/store" "$n"
  elif [[ " $nix_big " == *" unsandboxed "* ]]; then
    hf_slow --export-json "$json/nix-nosb-$n.json" \
      --prepare "$fresh nix-nosb" -n "nix-build trivial $n unsandboxed" "$nix nosb $n $cur"
    check_top "$(last)/store" "$n"
    [ -f "$work/noop-nix" ] || echo "nosb $(last)" > "$work/noop-nix"
  fi

  echo; echo "== 2. $n processes, no store, 2 at a time"
  hf --export-json "$json/spawn-$n.json" \
    --prepare "$fresh spawn" -n "spawn $n" "'$bb' spawn $n --dir $cur -j 2 > /dev/null"
done

echo; echo "== 3. $n_big builtin text files + 1"
hf --export-json "$json/builtin.json" \
  --prepare "$fresh ours-sb" -n "bigtop builtin $n_big" "'$bb' builtin $n_big --store $cur > /dev/null"

echo; echo "== 4. no-op rebuild of the $n_big graph"
# Stores fully built, sandboxed: ours from a last run, Nix's from the timing above.
bash "$work/fresh.sh" ours-sb
"$bb" trivial "$n_big" --store "$(last)" -j 2
cp "$work/cur" "$work/noop-ours"
bash "$work/fresh.sh" ours-nosb
"$bb" trivial "$n_big" --store "$(last)" --no-sandbox -j 2
cp "$work/cur" "$work/noop-ours-nosb"
noop_ours=$(cat "$work/noop-ours")
noop_ours_nosb=$(cat "$work/noop-ours-nosb")
noop=(-n "bigtop no-op $n_big (sandboxed store)" "'$bb' trivial $n_big --store '$noop_ours' -j 2 > /dev/null"
      -n "bigtop no-op $n_big (unsandboxed store)" "'$bb' trivial $n_big --store '$noop_ours_nosb' --no-sandbox -j 2 > /dev/null")
if [ -f "$work/noop-nix" ]; then
  read -r kind dir < "$work/noop-nix"
  what=$([ "$kind" = sb ] && echo sandboxed || echo unsandboxed)
  noop+=(-n "nix-build no-op $n_big ($what)" "$nix $kind $n_big '$dir'")
fi
hyperfine --warmup 2 --runs "$runs" --export-json "$json/noop.json" "${noop[@]}"
# Inside the binary: adding the (valid) derivations, and the build call.
for i in $(seq "$runs"); do "$bb" trivial "$n_big" --store "$noop_ours" -j 2; done > "$json/noop-ours.txt"
for i in $(seq "$runs"); do "$bb" trivial "$n_big" --store "$noop_ours_nosb" --no-sandbox -j 2; done > "$json/noop-ours-nosb.txt"
echo "load: $(uptime)"

python3 - "$json" "$n_small" "$n_big" <<'PY'
import glob, json, re, statistics, sys
d, n_small, n_big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = {}
for f in sorted(glob.glob(f"{d}/*.json")):
    r.update({x["command"]: x["median"] for x in json.load(open(f))["results"]})
ms = lambda s: f"{s*1000:,.0f} ms"
print()
print("medians:")
for cmd, t in r.items():
    n = n_big if str(n_big) in cmd else n_small
    if "no-op" in cmd:
        print(f"  {cmd}: {ms(t)}")
    elif cmd.startswith("spawn"):
        print(f"  {cmd}: {ms(t)}  ({t*1000/n:.2f} ms a process)")
    else:
        print(f"  {cmd}: {ms(t)}  ({t*1000/(n+1):.2f} ms a derivation)")
def ratio(a, b, what, target):
    if a in r and b in r:
        print(f"{what}: {r[a]/r[b]:.2f}x  ({target})")
for n in [n_small, n_big]:
    ratio(f"nix-build trivial {n} sandboxed", f"bigtop trivial {n} sandboxed",
          f"nix-build / bigtop, {n} sandboxed", "target >= 10x")
    ratio(f"nix-build trivial {n} unsandboxed", f"bigtop trivial {n} unsandboxed",
          f"nix-build / bigtop, {n} unsandboxed", "target >= 20x")
    ratio(f"bigtop trivial {n} unsandboxed", f"spawn {n}",
          f"bigtop unsandboxed / plain spawn, {n}", "target <= 2x")
    ratio(f"bigtop trivial {n} sandboxed", f"spawn {n}",
          f"bigtop sandboxed / plain spawn, {n}", "no target")
print(f"bigtop builtin {n_big}: {ms(r[f'bigtop builtin {n_big}'])}  (target < 1,000 ms)")
print(f"bigtop no-op {n_big}: {ms(r[f'bigtop no-op {n_big} (sandboxed store)'])}  (target < 50 ms)")
for what in ["sandboxed", "unsandboxed"]:
    ratio(f"nix-build no-op {n_big} ({what})", f"bigtop no-op {n_big} ({what} store)",
          f"nix-build / bigtop, no-op {n_big} ({what})", "no target")
for name in ["noop-ours", "noop-ours-nosb"]:
    lines = open(f"{d}/{name}.txt").read().splitlines()
    phase = lambda p: statistics.median(float(re.search(p + r" ([0-9.]+) ms", l).group(1)) for l in lines)
    print(f"inside {name}: open {phase('open'):.1f} ms, add {phase('add'):.1f} ms, build call {phase('build'):.1f} ms (medians of {len(lines)})")
PY
