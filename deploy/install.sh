#!/usr/bin/env bash
# Installs ringside as a systemd service; safe to run again (it changes only
# what differs and keeps existing configuration files).
#
#   sudo deploy/install.sh              build, install, migrate, (re)start
#   sudo deploy/install.sh --no-start   install only
#
# The binary runs on any x86-64 (or aarch64) CPU. To build it for this
# machine's CPU instead (AVX2 without run-time dispatch in the HTTP parser;
# about 8 % less CPU per pipelined request, measured), set
# RINGSIDE_TARGET_CPU=native: only when the binary never moves to an older
# CPU (a VM that migrates between hosts may not keep its CPU model).
#
# What it puts where:
#   /usr/local/bin/ringside                 the release binary
#   /etc/systemd/system/ringside.service    the unit
#   /etc/ringside/ringside.toml             settings (example, kept if present)
#   /etc/ringside/ringside.env              DATABASE_URL and secrets (0600, kept if present)
#   /etc/sysctl.d/60-ringside.conf          kernel settings (applied with sysctl --system)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root (sudo)" >&2; exit 1; }
start=1
[ "${1:-}" = "--no-start" ] && start=

if [ -n "${RINGSIDE_TARGET_CPU:-}" ]; then
  RUSTFLAGS="${RUSTFLAGS:-} -C target-cpu=$RINGSIDE_TARGET_CPU" cargo build --release --locked
else
  cargo build --release --locked
fi
install -m 0755 target/release/ringside /usr/local/bin/ringside.new
mv -f /usr/local/bin/ringside.new /usr/local/bin/ringside
install -m 0644 deploy/ringside.service /etc/systemd/system/ringside.service
# The same unit as a template, for a second instance during an upgrade
# (see deploy/README.md, "Restarts that drop nothing").
install -m 0644 deploy/ringside.service /etc/systemd/system/ringside@.service
install -d -m 0755 /etc/ringside /usr/local/share/doc/ringside
install -m 0644 deploy/README.md /usr/local/share/doc/ringside/README.md
[ -e /etc/ringside/ringside.toml ] || install -m 0644 deploy/ringside.toml /etc/ringside/ringside.toml
[ -e /etc/ringside/ringside.env ] || install -m 0600 deploy/ringside.env /etc/ringside/ringside.env
install -m 0644 deploy/sysctl.d/60-ringside.conf /etc/sysctl.d/60-ringside.conf
sysctl --system >/dev/null || echo "install.sh: sysctl --system reported errors (containers may refuse some keys)" >&2

/usr/local/bin/ringside check-config --config /etc/ringside/ringside.toml >/dev/null

# Migrations, with the service's own database settings.
set -a
# shellcheck disable=SC1091
. /etc/ringside/ringside.env
set +a
if [ -n "${DATABASE_URL:-}" ]; then
  /usr/local/bin/ringside migrate
else
  echo "install.sh: DATABASE_URL is not set in /etc/ringside/ringside.env; skipping migrations" >&2
fi

if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if [ -n "$start" ]; then
    systemctl enable ringside.service
    # A first install starts; later runs restart (see deploy/README.md for
    # an upgrade that drops nothing: a second instance, then stop the first).
    systemctl restart ringside.service
    systemctl --no-pager status ringside.service | head -5
  fi
else
  echo "install.sh: no running systemd here; installed files only" >&2
fi
