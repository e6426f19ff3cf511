# Sourced by .ci/run: start a throw-away PostgreSQL server on loopback and export
# SAEGOV_TEST_POSTGRES_URL for the tests marked `postgres`. Installs the Debian package if no
# server binaries are found (needs root, as on CI). Stopped again when .ci/run exits.
_saegov_pg_setup() {
  local bindir pgdata port runas=()
  bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "postgres.sh: no PostgreSQL server found and not root; postgres tests will be skipped" >&2
      return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  fi
  pgdata="$(mktemp -d /tmp/saegov-pg.XXXXXX)"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$pgdata"
    runas=(runuser -u postgres --)
  fi
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  "${runas[@]}" "$bindir/initdb" -D "$pgdata/data" -U postgres --auth=trust -E UTF8 >/dev/null
  "${runas[@]}" "$bindir/pg_ctl" -D "$pgdata/data" -l "$pgdata/server.log" -w \
    -o "-p $port -k $pgdata -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50" start >/dev/null
  "${runas[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres saegov_test
  export SAEGOV_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$port/saegov_test"
  SAEGOV_PG_STOP="${runas[*]} $bindir/pg_ctl -D $pgdata/data -m fast stop; rm -rf $pgdata"
  trap 'eval "$SAEGOV_PG_STOP" >/dev/null 2>&1 || true' EXIT
  echo "postgres.sh: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($pgdata)" >&2
}
_saegov_pg_setup
