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
    if [ -f "$dir/mlflow.pid" ]; then
      pid="$(cat "$dir/mlflow.pid")"
      kill "$pid" 2>/dev/null || true
      pkill -P "$pid" 2>/dev/null || true
      rm -f "$dir/mlflow.pid"
    fi
    if [ -f "$dir/pg.bindir" ]; then
      "${runas[@]}" "$(cat "$dir/pg.bindir")/pg_ctl" -D "$(cat "$dir/pg.path")/data" -m fast stop >/dev/null 2>&1 || true
    fi
    rm -f "$dir/team.env"
    pgdir="$(cat "$dir/pg.path" 2>/dev/null || echo "$dir/pg")"
    if [ "$cmd" = remove ]; then
      # As root the server's data is outside DIR (/tmp/saegov-team-pg.*): deleting DIR alone
      # would leave a whole cluster behind. Only a folder this script made is deleted.
      case "$pgdir" in
        "$dir"/*|/tmp/saegov-team-pg.*) rm -rf "$pgdir" ;;
      esac
      rm -rf "$dir"
      echo "team_services: stopped and removed $dir and its PostgreSQL data" >&2
    else
      echo "team_services: stopped (data kept in $dir, PostgreSQL's in $pgdir; \`$0 remove $dir\` deletes both)" >&2
    fi
    ;;
  *)
    echo "usage: $0 start|stop|remove [DIR]" >&2
    exit 2
    ;;
esac
