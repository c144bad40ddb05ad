#!/usr/bin/env bash
# Make sure a Docker engine answers, installing and starting one on Debian/Ubuntu if needed.
# Idempotent: exits 0 at once when `docker info` already answers. Needs root for the rest.
# Also installs debootstrap, which envmatrix uses to make base images when no registry answers.
#   env: DOCKERD_LOG (default /var/log/dockerd.log), ENGINE_WAIT_S (default 60)
set -euo pipefail

log=${DOCKERD_LOG:-/var/log/dockerd.log}
wait_s=${ENGINE_WAIT_S:-60}

say() { printf 'install-engine: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

engine_answers() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

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
