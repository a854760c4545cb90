# Shared by scripts/pg-test-cluster and scripts/demo: finding (or
# installing) PostgreSQL's server binaries, running them as a non-root
# owner, and picking a free port. Source it; it defines functions only.

die() { echo "${0##*/}: $*" >&2; exit 1; }
log() { echo "${0##*/}: $*" >&2; }

find_bindir() {
  local d
  if command -v initdb >/dev/null 2>&1; then
    d=$(dirname "$(readlink -f "$(command -v initdb)")")
    [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] && { echo "$d"; return 0; }
  fi
  # Debian/Ubuntu keep the server binaries off PATH; take the newest version.
  for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5 -V -r); do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  return 1
}

install_postgres() {
  log "no initdb found; installing postgresql with apt-get"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq postgresql >&2
}

# Runs a command as the cluster owner: `postgres` when we are root, else us.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

port_in_use() {
  # Any socket on the port counts, not just listeners: PostgreSQL's bind
  # fails on a port held by a live connection too.
  if command -v ss >/dev/null 2>&1; then
    ss -Htan "sport = :$1" 2>/dev/null | grep -q . && return 0
  fi
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_port() {
  # Stay below the kernel's ephemeral range, where outgoing connections
  # (plenty on a busy build box) would collide with us.
  local lo=20000 hi=30000 eph_lo p _
  eph_lo=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  if [ "$eph_lo" -gt 12000 ]; then hi=$((eph_lo - 1)); lo=$((hi - 10000 > 10000 ? hi - 10000 : 10000)); fi
  for _ in $(seq 1 50); do
    p=$((lo + RANDOM % (hi - lo)))
    port_in_use "$p" || { echo "$p"; return 0; }
  done
  die "no free TCP port found"
}

