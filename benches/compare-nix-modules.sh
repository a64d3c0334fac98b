#!/usr/bin/env bash
# Side by side, in one run: one machine of N services (default 200) in
# the module system — bigtop (`system-bench eval N`: every option merged,
# every assertion checked) against NixOS's module system
# (`lib.evalModules` of nixpkgs' lib, the same options, types, defaults,
# conditions and definitions, forced whole with `nix-instantiate --eval
# --strict`).
#
#   benches/compare-nix-modules.sh NIXPKGS_LIB_DIR     env: N (200), RUNS (10)
#
# NIXPKGS_LIB_DIR is a checkout of nixpkgs' `lib` (e.g. the `lib`
# directory of github:nix-community/nixpkgs.lib). Needs hyperfine and
# nix-bin. Prints hyperfine's table and the ratio.
set -euo pipefail
lib=${1:?usage: benches/compare-nix-modules.sh NIXPKGS_LIB_DIR}
lib=$(cd "$lib" && pwd)
[ -f "$lib/modules.nix" ] || { echo "error: \`$lib\` has no modules.nix: give nixpkgs' lib directory" >&2; exit 1; }
cd "$(dirname "$0")/.."
for tool in hyperfine nix-instantiate; do
  command -v "$tool" >/dev/null || { echo "error: \`$tool\` not found (apt-get install hyperfine nix-bin)" >&2; exit 1; }
done
export NIX_CONFIG=$'build-users-group =\nsubstituters =\nexperimental-features = nix-command'
cargo build --release -q -p bigtop-benches --bin system-bench
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
sb=$target/release/system-bench
n=${N:-200}
runs=${RUNS:-10}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$sb" nix "$n" "$lib" > "$work/machine.nix"
export NIX_STORE_DIR=$work/nix/store NIX_STATE_DIR=$work/nix/var NIX_LOG_DIR=$work/nix/log
mkdir -p "$NIX_STORE_DIR" "$NIX_STATE_DIR" "$NIX_LOG_DIR"
nix_cmd="nix-instantiate --readonly-mode --eval --strict $work/machine.nix > /dev/null"
# Both must succeed (and agree on the service count) before anything is timed.
ours=$("$sb" eval "$n")
theirs=$(nix-instantiate --readonly-mode --eval --strict "$work/machine.nix")
echo "bigtop: $ours; nix: $theirs services"
[ "${ours%% *}" = "$theirs" ] || { echo "error: the two sides disagree" >&2; exit 1; }
hyperfine --warmup 1 --runs "$runs" --export-json "$work/modules.json" \
  -n "bigtop modules $n" "'$sb' eval $n > /dev/null" \
  -n "nixos modules $n" "$nix_cmd"
python3 - "$work/modules.json" <<'PY'
import json, statistics, sys
r = {x["command"]: statistics.median(x["times"]) * 1e3 for x in json.load(open(sys.argv[1]))["results"]}
ours = next(v for k, v in r.items() if k.startswith("bigtop"))
nix = next(v for k, v in r.items() if k.startswith("nixos"))
print(f"medians: bigtop {ours:,.1f} ms, lib.evalModules {nix:,.1f} ms; ratio {nix / ours:.1f}x")
PY
