#!/usr/bin/env bash
# Side by side, in one run: evaluating a synthetic package set of N
# packages (default 10,000; each with 3–10 dependencies, a few variables
# and phases) to every .drv and output path — bigtop (`eval-bench run N`:
# a PackageSet of recipes, every package evaluated) against Nix 2.8
# (`nix-instantiate --readonly-mode --eval --strict` of the drvPath of
# every package of the same set written as `derivation` calls, which
# computes the same paths without writing to a store).
#
#   benches/compare-nix-eval.sh      env: N (10000), RUNS (10)
#
# Needs hyperfine and nix-bin. Prints hyperfine's table and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in hyperfine nix-instantiate; do
  command -v "$tool" >/dev/null || { echo "error: \`$tool\` not found (apt-get install hyperfine nix-bin)" >&2; exit 1; }
done
export NIX_CONFIG=$'build-users-group =\nsubstituters =\nexperimental-features = nix-command'
cargo build --release -q -p bigtop-benches --bin eval-bench
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
eb=$target/release/eval-bench
n=${N:-10000}
runs=${RUNS:-10}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$eb" nix "$n" > "$work/set.nix"
# Nix needs a store to exist even in read-only mode.
export NIX_STORE_DIR=$work/nix/store NIX_STATE_DIR=$work/nix/var NIX_LOG_DIR=$work/nix/log
mkdir -p "$NIX_STORE_DIR" "$NIX_STATE_DIR" "$NIX_LOG_DIR"
nix_cmd="nix-instantiate --readonly-mode --eval --strict -E 'map (p: p.drvPath) (import $work/set.nix)' > /dev/null"
# Both must succeed before anything is timed.
"$eb" run "$n"
sh -c "$nix_cmd"
hyperfine --warmup 1 --runs "$runs" --export-json "$work/eval.json" \
  -n "bigtop eval $n" "'$eb' run $n > /dev/null" \
  -n "nix-instantiate $n" "$nix_cmd"
python3 - "$work/eval.json" <<'PY'
import json, statistics, sys
r = {x["command"]: statistics.median(x["times"]) * 1e3 for x in json.load(open(sys.argv[1]))["results"]}
ours = next(v for k, v in r.items() if k.startswith("bigtop"))
nix = next(v for k, v in r.items() if k.startswith("nix"))
print(f"medians: bigtop {ours:,.0f} ms, nix-instantiate {nix:,.0f} ms; ratio {nix / ours:.1f}x (target >= 20x; bigtop target < 200 ms)")
PY
