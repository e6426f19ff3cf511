#!/usr/bin/env bash
# The team set-up of docs/team.md on one machine, on loopback: a PostgreSQL server holding the
# shared registry (database `saegov`) and MLflow's backend store (database `mlflow`), and an
# `mlflow server` that proxies artifact storage (clients never see the artifact folder).
#
#   scripts/team_services.sh start [DIR]   # DIR default: ./.saegov-team; writes DIR/team.env
#   source DIR/team.env                    # SAEGOV_DATABASE_URL, MLFLOW_TRACKING_URI
#   scripts/team_services.sh stop [DIR]     # data kept: start again to go on
#   scripts/team_services.sh remove [DIR]   # stop, then delete DIR and the PostgreSQL data
#
# Needs the PostgreSQL server binaries (Debian: `apt-get install postgresql`) and the project's
# virtualenv (`make install`; MLFLOW is .venv/bin/mlflow unless $MLFLOW is set).
set -euo pipefail
cmd="${1:-}"
dir="$(mkdir -p "${2:-.saegov-team}" && cd "${2:-.saegov-team}" && pwd)"
root="$(cd "$(dirname "$0")/.." && pwd)"
mlflow_bin="${MLFLOW:-$root/.venv/bin/mlflow}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

runas=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  runas=(runuser -u postgres --)
fi

case "$cmd" in
  start)
    if [ -f "$dir/team.env" ]; then
      echo "team_services: already started in $dir (stop it first)" >&2
      exit 1
    fi
    bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
      echo "team_services: no PostgreSQL server binaries (apt-get install postgresql)" >&2
      exit 1
    fi
    if [ ! -x "$mlflow_bin" ]; then
      echo "team_services: no mlflow at $mlflow_bin (make install, or set MLFLOW)" >&2
      exit 1
    fi
    pg_port="$(free_port)"
    mkdir -p "$dir/artifacts"
    pg="$dir/pg"
    if [ ${#runas[@]} -gt 0 ]; then
      # As root the server runs as `postgres`, which may not traverse DIR's parents.
      pg="$(mktemp -d /tmp/saegov-team-pg.XXXXXX)"
      chown postgres "$pg"
    else
      mkdir -p "$pg"
    fi
    echo "$pg" > "$dir/pg.path"
    "${runas[@]}" "$bindir/initdb" -D "$pg/data" -U postgres --auth=trust -E UTF8 >/dev/null
    "${runas[@]}" "$bindir/pg_ctl" -D "$pg/data" -l "$pg/server.log" -w \
      -o "-p $pg_port -k $pg -c listen_addresses=127.0.0.1" start >/dev/null
    for db in saegov mlflow; do
      "${runas[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres "$db"
    done
    echo "$bindir" > "$dir/pg.bindir"
    ml_port="$(free_port)"
    # Proxied artifacts: runs record mlflow-artifacts:/ URIs, served by this server from DIR/artifacts.
    MLFLOW_LOGGING_LEVEL=WARNING nohup "$mlflow_bin" server \
      --backend-store-uri "postgresql+psycopg://postgres@127.0.0.1:$pg_port/mlflow" \
      --artifacts-destination "$dir/artifacts" --serve-artifacts \
      --host 127.0.0.1 --port "$ml_port" --workers 1 >"$dir/mlflow.log" 2>&1 &
    echo $! > "$dir/mlflow.pid"
    for _ in $(seq 1 120); do
      if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$ml_port/health', timeout=2)" 2>/dev/null; then
        break
      fi
      if ! kill -0 "$(cat "$dir/mlflow.pid")" 2>/dev/null; then
        echo "team_services: mlflow server exited; see $dir/mlflow.log" >&2
        tail -n 5 "$dir/mlflow.log" >&2
        exit 1
      fi
      sleep 1
    done
    cat > "$dir/team.env" <<EOF
export SAEGOV_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:$pg_port/saegov
export MLFLOW_TRACKING_URI=http://127.0.0.1:$ml_port
EOF
    echo "team_services: PostgreSQL on 127.0.0.1:$pg_port, MLflow on http://127.0.0.1:$ml_port; source $dir/team.env" >&2
    ;;
  stop|remove)
    # Nothing read back from DIR is trusted as is (whoever can write DIR must not be able to make
    # this script, run as root, kill or delete or run something else): the pid must be this
    # folder's mlflow server, the server binaries are found again, the data folder must be the
    # one `start` makes.
    if [ -f "$dir/mlflow.pid" ]; then
      pid="$(cat "$dir/mlflow.pid")"
      args="$(ps -o args= -p "$pid" 2>/dev/null || true)"
      if [[ "$pid" =~ ^[0-9]+$ ]] && [ "$pid" -gt 1 ] && [[ "$args" == *"mlflow"*" server "* ]] \
         && [[ "$args" == *"--artifacts-destination $dir/artifacts"* ]]; then
        pkill -P "$pid" 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
      fi
      rm -f "$dir/mlflow.pid"
    fi
    pgdir="$dir/pg"
    if [ ${#runas[@]} -gt 0 ]; then
      pgdir="$(cat "$dir/pg.path" 2>/dev/null || true)"
      if ! [[ "$pgdir" =~ ^/tmp/saegov-team-pg\.[A-Za-z0-9]{6}$ ]] || [ -L "$pgdir" ] || [ ! -d "$pgdir" ] \
         || [ "$(stat -c %U "$pgdir")" != postgres ]; then
        echo "team_services: $dir/pg.path does not name a data folder this script made; its server is left alone" >&2
        pgdir=""
      fi
    fi
    bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -n "$pgdir" ] && [ -f "$pgdir/data/PG_VERSION" ] && [ -x "$bindir/pg_ctl" ]; then
      "${runas[@]}" "$bindir/pg_ctl" -D "$pgdir/data" -m fast stop >/dev/null 2>&1 || true
    fi
    rm -f "$dir/team.env"
    if [ "$cmd" = remove ]; then
      # As root the server's data is outside DIR (/tmp/saegov-team-pg.*): deleting DIR alone
      # would leave a whole cluster behind.
      if [ -n "$pgdir" ]; then rm -rf "$pgdir"; fi
      rm -rf "$dir"
      echo "team_services: stopped and removed $dir${pgdir:+ and its PostgreSQL data}" >&2
    else
      echo "team_services: stopped (data kept in $dir${pgdir:+ and $pgdir}; \`$0 remove $dir\` deletes it)" >&2
    fi
    ;;
  *)
    echo "usage: $0 start|stop|remove [DIR]" >&2
    exit 2
    ;;
esac
