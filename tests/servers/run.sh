#!/usr/bin/env bash
# Start/stop the real time-series servers the tests use: Prometheus, VictoriaMetrics, InfluxDB 1.x.
#
#   tests/servers/run.sh start           install missing Debian packages, start all three on free
#                                        127.0.0.1 ports with fresh data dirs, write .test-servers/servers.json
#                                        (no-op when they already run and answer their health endpoints)
#   tests/servers/run.sh stop [--force]  release this caller's lease; stop (TERM, then KILL) and delete
#                                        the data dirs once no other live run holds a lease
#   tests/servers/run.sh status          print URLs, PIDs and health (exit 0 = all healthy)
#   tests/servers/run.sh restart         stop --force, then start
#
# The lease id is the calling shell's PID ($PPID) unless SENTINEL_TEST_SERVERS_LEASE is set, so
# `make test` (start; pytest; stop in one recipe shell) in two checkouts-sharing terminals does not
# pull the servers from under a run that is still going. See tests/servers/README.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cmd="${1:-}"

case "$cmd" in
  start|stop|status|restart) ;;
  *) echo "usage: $0 start|stop [--force]|status|restart" >&2; exit 2 ;;
esac

export SENTINEL_TEST_SERVERS_LEASE="${SENTINEL_TEST_SERVERS_LEASE:-$PPID}"

ensure_installed() {
  # binary -> Debian package (bookworm: prometheus 2.42, victoria-metrics 1.79, influxdb 1.6)
  local missing=()
  command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
  command -v victoria-metrics >/dev/null 2>&1 || missing+=(victoria-metrics)
  command -v influxd >/dev/null 2>&1 || missing+=(influxdb)
  [ "${#missing[@]}" -eq 0 ] && return 0

  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "run.sh: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo -E)
  fi
  local t0=$SECONDS
  echo "run.sh: installing ${missing[*]} (apt-get) ..." >&2
  # A single apt user at a time: two concurrent `make test` runs on a fresh machine would race.
  (
    flock 9
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq >/dev/null
    # --no-install-recommends keeps it to the servers themselves; the packages' own services are
    # not wanted (containers usually refuse to start them via policy-rc.d anyway).
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
  ) 9>"/tmp/llm-sentinel-test-servers-apt.lock"
  # If a package's postinst did start a system-wide service, stop it: we only use our own instances.
  for svc in prometheus victoria-metrics influxdb; do
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      "${sudo[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
  done
  echo "run.sh: installed in $((SECONDS - t0))s" >&2
}

# The venv python if there is one (make test creates it first); the module is stdlib-only.
py="$root/.venv/bin/python"
[ -x "$py" ] || py="$(command -v python3)"

# RabbitMQ (127.0.0.1:5672, guest/guest) is a machine service on this project's machines; if it is
# not answering, start it (installing it first if needed), so the alert exporter tests never skip.
ensure_rabbitmq() {
  if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then return 0; fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "run.sh: installing rabbitmq-server (apt-get) ..." >&2
    (
      flock 9
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >/dev/null
      apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
    ) 9>"/tmp/llm-sentinel-test-servers-apt.lock"
  fi
  echo "run.sh: starting rabbitmq-server" >&2
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 120); do
    if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  echo "run.sh: rabbitmq did not come up on 127.0.0.1:5672" >&2
  return 1
}

if [ "$cmd" = start ] || [ "$cmd" = restart ]; then
  ensure_installed
  ensure_rabbitmq
fi

cd "$root"
exec "$py" -c 'import sys; from tests.servers import main; sys.exit(main())' "$@"
