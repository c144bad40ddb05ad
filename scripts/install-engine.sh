#!/usr/bin/env bash
# Make sure a Docker engine answers, installing and starting one on Debian/Ubuntu if needed.
# Idempotent: exits 0 at once when `docker info` already answers. Needs root for the rest.
# Also installs debootstrap, which envmatrix uses to make base images when no registry answers.
# --with-registry: also install Debian's docker-registry, the server the registry tests start on
# the loopback address (CI passes it; a user with a registry of their own does not need it).
#   env: DOCKERD_LOG (default /var/log/dockerd.log), ENGINE_WAIT_S (default 60)
set -euo pipefail

with_registry=0
for arg in "$@"; do
  case "$arg" in
    --with-registry) with_registry=1 ;;
    *) printf 'install-engine: unknown argument %s (known: --with-registry)\n' "$arg" >&2; exit 2 ;;
  esac
done

log=${DOCKERD_LOG:-/var/log/dockerd.log}
wait_s=${ENGINE_WAIT_S:-60}

say() { printf 'install-engine: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

engine_answers() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

install_registry() {
  command -v docker-registry >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || die "installing docker-registry needs root: run with sudo"
  command -v apt-get >/dev/null 2>&1 || die "no apt-get here: install a registry server yourself"
  say "installing docker-registry (for the registry tests)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed: check the package mirror and proxy settings"
  apt-get install -y -qq docker-registry >/dev/null || die "apt-get install docker-registry failed"
  # The package enables a service on :5000 where systemd runs; the tests start their own server.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
}

if [ "$with_registry" = 1 ]; then
  install_registry
fi

if engine_answers; then
  say "a Docker engine already answers"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "no engine answers and installing one needs root: run with sudo"
command -v apt-get >/dev/null 2>&1 \
  || die "no apt-get here: install Docker Engine for your system (docs.docker.com), then rerun"

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
# The hosts integration tests reach the engine through an sshd on the loopback address.
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed: check the package mirror and proxy settings"
  apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  say "starting dockerd in the background (log: $log)"
  # setsid: the engine outlives this shell and the session that started it.
  setsid dockerd >"$log" 2>&1 < /dev/null &
fi

for _ in $(seq 1 "$wait_s"); do
  if engine_answers; then
    say "the Docker engine answers"
    exit 0
  fi
  sleep 1
done
say "last lines of $log:"
tail -n 20 "$log" >&2 || true
die "dockerd did not answer within ${wait_s}s; see $log"
