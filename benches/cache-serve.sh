#!/usr/bin/env bash
# `bigtop cache serve` under load: a chroot store with 1,000 paths (990
# small files of 1 to 16 KiB of random text, 10 of 20 MiB taken from the
# host's programs and libraries, ~200 MiB in all), served on 127.0.0.1,
# and `serve-bench` (benches/src/bin/serve-bench.rs) as the clients:
#
# 1. narinfo requests per second, 16 and 64 connections in parallel (the
#    store records BLAKE3, so a warm-up round first computes each path's
#    SHA-256, at most `--max-hash-jobs` at once: twice the CPUs);
# 2. NAR throughput, every path once over 16 connections, zstd and
#    uncompressed;
# 3. the server's peak resident memory (VmHWM) after all that, and while
#    serving one 4 GiB path (a file of zeros) to one client.
#
#   benches/cache-serve.sh        env: SECONDS_EACH (10), ROUNDS (5), BENCH_DIR (a new dir), KEEP
#
# Needs python3. Prints the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "error: \`python3\` not found" >&2; exit 1; }
cargo build --release -q -p bigtop --bin bigtop -p bigtop-benches --bin serve-bench
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bt=$target/release/bigtop
bench=$target/release/serve-bench
seconds=${SECONDS_EACH:-10}
rounds=${ROUNDS:-5}
work=${BENCH_DIR:-$(mktemp -d -p "$target" serve-bench.XXXX)}
mkdir -p "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

# The files: small ones of random text, big ones of real binaries.
python3 benches/closure-files.py "$work/files"
"$bt" store add --store "$work/store" "$work"/files/* > "$work/paths"
echo "$(wc -l < "$work/paths") paths, $(du -sh "$work/store/bigtop/store" | cut -f1)"

# serve ARGS...: starts a server on a free port; sets $url and $pid.
serve() {
  local out=$work/serve.$RANDOM
  "$bt" cache serve --store "$work/store" --listen 127.0.0.1:0 --json "$@" > "$out" 2> "$out.err" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do [ -s "$out" ] && break; sleep 0.1; done
  url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$out")
}
peak() { awk '/VmHWM/ {printf "%.1f MiB", $2 / 1024}' "/proc/$1/status"; }

serve
echo "server at $url (zstd)"
"$bench" narinfo "$url" "$work/paths" 16 2 > /dev/null   # warm-up: each SHA-256 computed once
for threads in 16 64; do
  "$bench" narinfo "$url" "$work/paths" "$threads" "$seconds"
done
echo "server peak RSS after the narinfo runs: $(peak "$pid")"
"$bench" nar "$url" "$work/paths" 16 "$rounds"
echo "server peak RSS after the zstd NAR run: $(peak "$pid")"
kill "$pid"

serve --compression none
"$bench" nar "$url" "$work/paths" 16 "$rounds"
echo "server peak RSS after the uncompressed NAR run: $(peak "$pid")"
kill "$pid"

# One 4 GiB path, one client.
rm -rf "$work/files"
mkdir -p "$work/huge"
truncate -s 4G "$work/huge/zeros"
"$bt" store add --store "$work/store" "$work/huge/zeros" > "$work/huge.path"
rm -rf "$work/huge"
serve
echo "4 GiB path (zeros), zstd:"
start=$(date +%s.%N)
"$bench" nar "$url" "$work/huge.path" 1 1
echo "  narinfo + NAR in $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f} s')" "$start" "$(date +%s.%N)"); server peak RSS $(peak "$pid")"
kill "$pid"
serve --compression none
echo "4 GiB path (zeros), uncompressed:"
"$bench" nar "$url" "$work/huge.path" 1 1
echo "  server peak RSS $(peak "$pid")"
