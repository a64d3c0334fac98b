#!/usr/bin/env bash
# Side by side, in one run: NAR-hashing the benchmark tree (20,000 files of
# 1 KiB + 8 files of 64 MiB, warm page cache) with `bigtop hash path`,
# `nix hash path` (Nix 2.8, Debian's nix-bin) and `cat` reading the same
# files. Needs hyperfine and nix-bin (apt-get install hyperfine nix-bin).
#
#   benches/compare-nix.sh [TREE_DIR]
#
# Prints hyperfine's table and the ratios the README quotes.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in hyperfine nix python3; do
  command -v "$tool" >/dev/null || { echo "error: \`$tool\` not found (apt-get install hyperfine nix-bin python3)" >&2; exit 1; }
done
export NIX_CONFIG=$'build-users-group =\nsandbox = false\nexperimental-features = nix-command'

cargo build --release -q -p bigtop -p bigtop-benches
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bigtop=$target/release/bigtop
tree=${1:-$target/bench-tree}
if [ ! -d "$tree" ]; then
  echo "creating $tree (532 MiB)…"
  "$target/release/make-tree" "$tree"
fi
# Warm the page cache, and check both sides agree before timing them.
find "$tree" -type f -print0 | xargs -0 cat > /dev/null
ours=$("$bigtop" hash path --algo sha256 --base32 "$tree")
theirs=$(nix hash path --type sha256 --base32 "$tree")
[ "$ours" = "$theirs" ] || { echo "error: hashes differ: bigtop $ours, nix $theirs" >&2; exit 1; }

json=$(mktemp)
trap 'rm -f "$json"' EXIT
hyperfine --warmup 2 --runs "${RUNS:-10}" --export-json "$json" \
  -n "bigtop hash path (blake3)" "'$bigtop' hash path '$tree'" \
  -n "bigtop hash path --algo sha256" "'$bigtop' hash path --algo sha256 '$tree'" \
  -n "nix hash path (sha256)" "nix hash path '$tree'" \
  -n "cat (read every file)" "find '$tree' -type f -print0 | xargs -0 cat > /dev/null"

python3 - "$json" <<'PY'
import json, sys
r = {x["command"]: x["median"] for x in json.load(open(sys.argv[1]))["results"]}
ours, ours256 = r["bigtop hash path (blake3)"], r["bigtop hash path --algo sha256"]
nix, cat = r["nix hash path (sha256)"], r["cat (read every file)"]
print()
print(f"medians: bigtop blake3 {ours*1000:.0f} ms, bigtop sha256 {ours256*1000:.0f} ms, nix {nix*1000:.0f} ms, cat {cat*1000:.0f} ms")
print(f"nix hash path / bigtop hash path (blake3): {nix/ours:.2f}x  (target >= 1.3x)")
print(f"nix hash path / bigtop hash path --algo sha256: {nix/ours256:.2f}x")
print(f"bigtop hash path (blake3) / cat: {ours/cat:.2f}x  (target <= 1.2x)")
PY
