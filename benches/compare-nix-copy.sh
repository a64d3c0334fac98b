#!/usr/bin/env bash
# Side by side, in one run: writing a binary cache — `bigtop copy --to
# file://DIR` against `nix copy --to file://DIR` of Nix 2.8 with its
# default compression (xz) and with `?compression=zstd` — for the same
# 1,000 store paths (990 small files of 1 to 16 KiB, 10 of about 20 MiB
# taken from the host's programs and libraries, ~200 MiB in all) added to
# each side's own chroot store with the same logical dir (/nix/store).
# Then substituting all of them back into an empty store, signatures
# checked on both sides: from the file:// cache each side wrote with zstd,
# and both from one cache on nginx (the one Nix wrote with zstd, which
# both read) over HTTP.
#
#   benches/compare-nix-copy.sh        env: RUNS (3), BENCH_DIR (a new dir)
#
# Needs hyperfine, nix-bin, nginx, curl and python3. Prints hyperfine's
# tables and the ratios the README quotes.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in hyperfine nix nginx curl python3; do
  command -v "$tool" >/dev/null || { echo "error: \`$tool\` not found (apt-get install hyperfine nix-bin nginx curl python3)" >&2; exit 1; }
done
export NIX_CONFIG=$'build-users-group =\nsandbox = false\nexperimental-features = nix-command\nsubstituters ='
cargo build --release -q -p bigtop
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bt=$target/release/bigtop
runs=${RUNS:-3}
work=${BENCH_DIR:-$(mktemp -d -p "$target" copy-bench.XXXX)}
mkdir -p "$work"
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
export HOME=$work/home XDG_CACHE_HOME=$work/home/cache XDG_CONFIG_HOME=$work/home/config BIGTOP_CONF_DIR=$work/home/etc
mkdir -p "$HOME"
# One signing key for both sides' caches; both check signatures.
(cd "$work" && "$bt" key generate bench-1 > /dev/null)
pub=$(cat "$work/bench-1.public")

# The files: small ones of random text, big ones of real binaries.
python3 benches/closure-files.py "$work/files"
du -sh "$work/files"

# Each side's store, /nix/store inside.
"$bt" store add --store "$work/ours" --store-dir /nix/store "$work"/files/* > "$work/ours.paths"
nix-store --store "local?root=$work/nix" --add "$work"/files/* > "$work/nix.paths"
echo "$(wc -l < "$work/ours.paths") paths on each side"
nixstore="local?root=$work/nix"

hyperfine --warmup 1 --runs "$runs" --export-json "$work/upload.json" \
  --prepare "rm -rf '$work/c-ours' '$work/c-xz' '$work/c-zstd'; sync" \
  -n "bigtop copy --to file:// (zstd)" "'$bt' copy --store '$work/ours' --store-dir /nix/store --to 'file://$work/c-ours' \$(cat '$work/ours.paths') > /dev/null" \
  -n "nix copy --to file:// (xz, its default)" "nix copy --from '$nixstore' --to 'file://$work/c-xz' \$(cat '$work/nix.paths')" \
  -n "nix copy --to file://?compression=zstd" "nix copy --from '$nixstore' --to 'file://$work/c-zstd?compression=zstd' \$(cat '$work/nix.paths')"

# The caches, written once more and signed, to substitute from.
rm -rf "$work/c-ours" "$work/c-zstd"
"$bt" copy --store "$work/ours" --store-dir /nix/store --to "file://$work/c-ours" --sign "$work/bench-1.secret" $(cat "$work/ours.paths") > /dev/null
nix copy --from "$nixstore" --to "file://$work/c-zstd?compression=zstd&secret-key=$work/bench-1.secret" $(cat "$work/nix.paths")
hyperfine --warmup 1 --runs "$runs" --export-json "$work/fetch.json" \
  --prepare "rm -rf '$work/into-ours' '$work/into-nix' '$XDG_CACHE_HOME'; sync" \
  -n "bigtop copy --from file:// (zstd)" "'$bt' copy --store '$work/into-ours' --store-dir /nix/store --from 'file://$work/c-ours' --trusted-public-keys '$pub' \$(cat '$work/ours.paths') > /dev/null" \
  -n "nix copy --from file:// (zstd)" "nix copy --from 'file://$work/c-zstd' --to 'local?root=$work/into-nix' --option trusted-public-keys '$pub' \$(cat '$work/nix.paths')"

# nginx on 127.0.0.1 serving the cache Nix wrote with zstd; both sides
# substitute the same paths from it.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<EOF
daemon off; master_process off; user root; worker_processes 1;
pid $work/nginx/nginx.pid; error_log $work/nginx/error.log;
events { worker_connections 256; }
http {
  access_log off; client_body_temp_path $work/nginx/body; proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi; uwsgi_temp_path $work/nginx/uwsgi; scgi_temp_path $work/nginx/scgi;
  server { listen 127.0.0.1:$port; root $work/c-zstd; }
}
EOF
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
nginx_pid=$!
trap 'kill $nginx_pid 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/nix-cache-info" > /dev/null && break; sleep 0.1; done
hyperfine --warmup 1 --runs "$runs" --export-json "$work/http.json" \
  --prepare "rm -rf '$work/into-ours' '$work/into-nix' '$XDG_CACHE_HOME'; sync" \
  -n "bigtop copy --from http:// (nginx, zstd)" "'$bt' copy --store '$work/into-ours' --store-dir /nix/store --from 'http://127.0.0.1:$port' --trusted-public-keys '$pub' \$(cat '$work/nix.paths') > /dev/null" \
  -n "nix copy --from http:// (nginx, zstd)" "nix copy --from 'http://127.0.0.1:$port' --to 'local?root=$work/into-nix' --option trusted-public-keys '$pub' \$(cat '$work/nix.paths')"

python3 - "$work/upload.json" "$work/fetch.json" "$work/http.json" <<'PY'
import json, statistics, sys
for f in sys.argv[1:]:
    r = [(x["command"], statistics.median(x["times"])) for x in json.load(open(f))["results"]]
    ours = r[0][1]
    for name, t in r:
        print(f"{name}: {t:.2f} s" + ("" if name == r[0][0] else f"  (bigtop {t / ours:.1f}x faster)"))
PY
