#!/usr/bin/env bash
# bigtop's test command: installs what the tests need, then runs every test
# of the workspace (unit, integration, doc tests). Extra arguments go to
# `cargo test`, e.g. `scripts/test.sh -p bigtop-core --test nix`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Nix 2.8 is the peer our formats are checked against, live.
need=()
command -v nix-store >/dev/null || need+=(nix-bin)
# GNU make: the jobserver tests run two `make` builds side by side.
command -v make >/dev/null || need+=(make)
# The bootstrap imports the host's C compiler and tools: the package tests
# build a C library and a program with them.
command -v gcc >/dev/null || need+=(gcc)
[ -e /usr/include/stdio.h ] || need+=(libc6-dev)
command -v patch >/dev/null || need+=(patch)
# s6: the toplevel's s6 service directories are run with its tools, and
# containers boot with s6-svscan as init.
command -v s6-applyuidgid >/dev/null || need+=(s6)
# systemd-analyze checks every rendered unit (no systemd need be running).
command -v systemd-analyze >/dev/null || need+=(systemd)
# nginx with WebDAV: the binary cache tests start one on 127.0.0.1 to
# upload to (PUT) and substitute from, for bigtop and for Nix.
command -v nginx >/dev/null || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_http_dav_ext_module.so ] || need+=(libnginx-mod-http-dav-ext)
# sshd and the ssh client: `bigtop copy` over SSH is tested against a real
# sshd on 127.0.0.1, with keys made by ssh-keygen.
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
if [ ${#need[@]} -gt 0 ]; then
  sudo=
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo test --workspace "$@"
