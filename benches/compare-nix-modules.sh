#!/usr/bin/env bash
# Side by side, in one run: one machine of N services (default 200) in
# the module system — bigtop (`system-bench eval N`: every option merged,
# every assertion checked) against NixOS's module system
# (`lib.evalModules` of nixpkgs' lib, the same options, types, defaults,
# conditions and definitions, forced whole with `nix-instantiate --eval
# --strict`). Then fleets of machines: each machine 20 service modules
# (five typed options each, a service, a user, a firewall port, an /etc
# file, conditions, per-machine overrides at force and default priority),
# printed as JSON by both sides and checked byte for byte.
#
#   benches/compare-nix-modules.sh NIXPKGS_LIB_DIR     env: N (200), RUNS (10), FLEET ("100 1000")
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

# A fleet: M machines (FLEET, default "100 1000") of 20 service modules
# each, every machine's /etc, users, services and firewall printed as
# JSON by both sides; the bytes must be the same before anything is
# timed. bigtop on one thread (the ratio) and on every core (beside it).
cores=$(nproc)
for m in ${FLEET:-100 1000}; do
  "$sb" fleet-nix "$m" "$lib" > "$work/fleet.nix"
  nix-instantiate --readonly-mode --eval --strict --json "$work/fleet.nix" > "$work/fleet-nix.json"
  "$sb" fleet-json "$m" 1 > "$work/fleet-ours.json" 2>/dev/null
  cmp "$work/fleet-nix.json" "$work/fleet-ours.json" || { echo "error: the two sides print different fleets of $m machines" >&2; exit 1; }
  echo "fleet of $m machines: both sides print the same $(wc -c < "$work/fleet-ours.json") bytes"
  hyperfine --warmup 1 --runs "$runs" --export-json "$work/fleet.json" \
    -n "bigtop fleet $m, 1 thread" "'$sb' fleet-json $m 1 > /dev/null 2>&1" \
    -n "bigtop fleet $m, $cores threads" "'$sb' fleet-json $m $cores > /dev/null 2>&1" \
    -n "nixos fleet $m" "nix-instantiate --readonly-mode --eval --strict --json $work/fleet.nix > /dev/null"
  python3 - "$work/fleet.json" "$m" <<'PY'
import json, statistics, sys
r = {x["command"]: statistics.median(x["times"]) * 1e3 for x in json.load(open(sys.argv[1]))["results"]}
m = int(sys.argv[2])
one = next(v for k, v in r.items() if k.endswith("1 thread"))
many = next(v for k, v in r.items() if k.startswith("bigtop") and not k.endswith("1 thread"))
nix = next(v for k, v in r.items() if k.startswith("nixos"))
print(f"fleet of {m}: bigtop {one:,.1f} ms on one thread ({one / m:.3f} ms per machine), {many:,.1f} ms on every core; "
      f"lib.evalModules {nix:,.1f} ms; ratio {nix / one:.1f}x single-threaded, {nix / many:.1f}x on every core")
PY
done
