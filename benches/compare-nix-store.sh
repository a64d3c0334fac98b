#!/usr/bin/env bash
# Side by side, in one run: the store targets, bigtop (`store-bench`, one
# store operation per process) against Nix 2.8 (`nix-store`, Debian's
# nix-bin) on chroot stores of the same shape (see benches/src/shapes.rs):
#
#   1. registering 10,000 small paths: our batch of text paths, and of the
#      same files from disk, against `nix-store --add` of those 10,000
#      files in one invocation, and against `nix-store --load-db` of a dump
#      of 10,000 paths (registration only: Nix writes no files for it);
#   2. the closure of the top path of a 100,000-path graph: our
#      `Store::closure` against `nix-store -qR` on a database loaded with
#      `--load-db` (-qR only reads the database: the files need not exist);
#   3. collecting 10,000 unreachable paths, as a graph and flat: our
#      `collect_garbage` against `nix-store --gc` (whose collector walks the
#      store directory, so there the files are written before `--load-db`).
#
# Every run that changes a store gets a fresh one, made by hyperfine's
# `--prepare` (and synced, so that the preparation's writeback does not
# land in the timed run). Nothing is deleted until the timing is over:
# on an ext4 without a journal (like the development machine's), creating
# inodes right after many were deleted is several times slower, which
# would make the order of the runs matter.
#
#   benches/compare-nix-store.sh
#     env: RUNS (10), BENCH_DIR (a new dir in the target dir), KEEP=1 (keep
#     it), N_REGISTER, N_GRAPH, N_GARBAGE (smaller sizes, for a quick try)
#
# Needs hyperfine, nix-bin and python3. Prints hyperfine's tables and the
# medians, rates and ratios the README quotes.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in hyperfine nix-store python3; do
  command -v "$tool" >/dev/null || { echo "error: \`$tool\` not found (apt-get install hyperfine nix-bin python3)" >&2; exit 1; }
done
export NIX_CONFIG=$'build-users-group =\nsandbox = false\nexperimental-features = nix-command'

cargo build --release -q -p bigtop-benches
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
sb=$target/release/store-bench
runs=${RUNS:-10}
n_register=${N_REGISTER:-10000}
n_graph=${N_GRAPH:-100000}
n_garbage=${N_GARBAGE:-10000}

# On the same file system as the build, not a tmpfs: a store lives on disk.
mkdir -p "$target"
work=${BENCH_DIR:-$(mktemp -d "$target/store-bench.XXXXXX")}
mkdir -p "$work/runs"
cleanup() { [ "${KEEP:-}" = 1 ] || rm -rf "$work"; }
trap cleanup EXIT
echo "working in $work"

# `fresh.sh KIND` makes a new store in a new directory, fills it as KIND
# says and writes its directory to $work/cur for the timed command.
cat > "$work/fresh.sh" <<EOF
#!/usr/bin/env bash
set -euo pipefail
n=\$(( \$(cat "$work/counter" 2>/dev/null || echo 0) + 1 ))
echo "\$n" > "$work/counter"
dir="$work/runs/\$1-\$n"
case \$1 in
  ours) "$sb" init "\$dir" ;;
  nix) nix-store --store "\$dir" --load-db < /dev/null ;;
  ours-garbage-graph) "$sb" init "\$dir"; "$sb" populate-garbage "\$dir" $n_garbage graph > /dev/null ;;
  ours-garbage-flat) "$sb" init "\$dir"; "$sb" populate-garbage "\$dir" $n_garbage flat > /dev/null ;;
  nix-garbage-graph|nix-garbage-flat)
    nix-store --store "\$dir" --load-db < /dev/null
    "$sb" nix-dump "\${1#nix-}" $n_garbage "\$dir.dump" "\$dir" > /dev/null
    nix-store --store "\$dir" --load-db < "\$dir.dump" ;;
  *) echo "fresh.sh: unknown kind \$1" >&2; exit 1 ;;
esac
echo "\$dir" > "$work/cur"
sync
EOF
fresh="bash '$work/fresh.sh'"
cur="\"\$(cat '$work/cur')\""

echo "preparing inputs…"
"$sb" write-files "$work/files" $n_register
"$sb" nix-dump register $n_register "$work/register.dump" > /dev/null
"$sb" init "$work/graph-ours"
top_ours=$("$sb" populate-graph "$work/graph-ours" $n_graph)
nix-store --store "$work/graph-nix" --load-db < /dev/null
top_nix=$("$sb" nix-dump graph $n_graph "$work/graph.dump")
nix-store --store "$work/graph-nix" --load-db < "$work/graph.dump"
sync

# Both sides must hold the same graph: the same 100,000 names in the closure.
"$sb" closure "$work/graph-ours" "$top_ours" > "$work/closure-ours"
nix-store --store "$work/graph-nix" -qR "$top_nix" > "$work/closure-nix"
names() { sed 's|^.*/[0-9a-z]\{32\}-||' "$1" | sort; }
[ "$(wc -l < "$work/closure-ours")" -eq $n_graph ] || { echo "error: our closure has $(wc -l < "$work/closure-ours") paths, not $n_graph" >&2; exit 1; }
cmp -s <(names "$work/closure-ours") <(names "$work/closure-nix") || { echo "error: the two closures differ" >&2; exit 1; }

json=$work/json
mkdir -p "$json"
hf() { hyperfine --warmup 1 --runs "$runs" "$@"; }

echo; echo "== 1. register $n_register small paths"
hf --export-json "$json/register.json" \
  --prepare "$fresh ours" -n "bigtop register (batch of text paths)" "'$sb' register $cur $n_register" \
  --prepare "$fresh ours" -n "bigtop add-files (batch, same files as nix)" "'$sb' add-files $cur '$work/files'" \
  --prepare "$fresh nix" -n "nix-store --add" "cd '$work/files' && nix-store --store $cur --add * > /dev/null" \
  --prepare "$fresh nix" -n "nix-store --load-db" "nix-store --store $cur --load-db < '$work/register.dump'"
# The last runs did what they should.
last=$(cat "$work/cur")
got=$(nix-store --store "$last" --dump-db | grep -c '^/nix/store/' || true)
[ "$got" -eq $n_register ] || { echo "error: nix-store --load-db registered $got paths" >&2; exit 1; }

echo; echo "== 2. closure of a $n_graph-path graph"
hf --export-json "$json/closure.json" \
  -n "bigtop closure" "'$sb' closure '$work/graph-ours' '$top_ours'" \
  -n "nix-store -qR" "nix-store --store '$work/graph-nix' -qR '$top_nix'"

echo; echo "== 3. collect $n_garbage unreachable paths"
for shape in graph flat; do
  hf --export-json "$json/gc-$shape.json" \
    --prepare "$fresh ours-garbage-$shape" -n "bigtop gc ($shape)" "'$sb' gc $cur" \
    --prepare "$fresh nix-garbage-$shape" -n "nix-store --gc ($shape)" "nix-store --store $cur --gc"
  last=$(cat "$work/cur")
  left=$(find "$last/nix/store" -mindepth 1 -maxdepth 1 ! -name .links | wc -l)
  [ "$left" -eq 0 ] || { echo "error: nix-store --gc left $left paths" >&2; exit 1; }
done
# Our side: a fresh garbage store, collected once more, outside the timing.
bash "$work/fresh.sh" ours-garbage-graph
"$sb" gc "$(cat "$work/cur")"
left=$(find "$(cat "$work/cur")/bigtop/store" -mindepth 1 -maxdepth 1 | wc -l)
[ "$left" -eq 0 ] || { echo "error: bigtop gc left $left paths" >&2; exit 1; }

python3 - "$json" $n_register $n_graph $n_garbage <<'PY'
import json, sys
d, n_reg, n_graph, n_gc = sys.argv[1], *map(int, sys.argv[2:])
r = {}
for name in ["register", "closure", "gc-graph", "gc-flat"]:
    r.update({x["command"]: x["median"] for x in json.load(open(f"{d}/{name}.json"))["results"]})
ms = lambda s: f"{s*1000:.0f} ms"
rate = lambda n, s: f"{n/s:,.0f} paths/s"
print()
print("medians:")
for cmd, t in r.items():
    n = n_graph if "closure" in cmd or "-qR" in cmd else n_reg if "gc" not in cmd else n_gc
    print(f"  {cmd}: {ms(t)}  ({rate(n, t)})")
ours, add, load = r["bigtop register (batch of text paths)"], r["nix-store --add"], r["nix-store --load-db"]
files = r["bigtop add-files (batch, same files as nix)"]
print(f"nix-store --add / bigtop register: {add/ours:.2f}x  (target >= 10x)")
print(f"nix-store --add / bigtop add-files: {add/files:.2f}x")
print(f"nix-store --load-db (registration only) / bigtop register: {load/ours:.2f}x")
print(f"nix-store -qR / bigtop closure: {r['nix-store -qR']/r['bigtop closure']:.2f}x  (target >= 3x)")
for shape in ["graph", "flat"]:
    print(f"nix-store --gc / bigtop gc ({shape}): {r[f'nix-store --gc ({shape})']/r[f'bigtop gc ({shape})']:.2f}x")
PY
