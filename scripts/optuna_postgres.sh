#!/usr/bin/env bash
# A PostgreSQL server for Optuna studies, run as yourself (no root) on a cluster login node, so
# that sweeper workers on any node share one study (hydra.sweeper.storage=<the printed URL>).
#
#   scripts/optuna_postgres.sh start [DIR] [PORT]   create (first time) and start; prints the URL
#   scripts/optuna_postgres.sh url   [DIR] [PORT]   print the URL again
#   scripts/optuna_postgres.sh stop  [DIR]          stop the server
#
# DIR defaults to ~/.ftlab/postgres, PORT to 55432. The first start makes a random password for
# the database user "ftlab" and writes it to ~/.pgpass (mode 600), where libpq (psycopg) finds
# it on every node that shares your home directory: the URL holds no password, so none ends up
# in job directories or logs. The server needs Debian's postgresql package (make install) or any
# PostgreSQL's initdb/pg_ctl on PATH.
set -euo pipefail

action=${1:-start}
dir=${2:-$HOME/.ftlab/postgres}
port=${3:-55432}
host=$(hostname -f 2>/dev/null || hostname)

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -n "$bin" ]; then PATH="$bin:$PATH"; fi
command -v pg_ctl >/dev/null || { echo "error: no pg_ctl: apt-get install postgresql (or make install)" >&2; exit 2; }
if [ "$(id -u)" = 0 ]; then echo "error: PostgreSQL refuses to run as root: run this as yourself" >&2; exit 2; fi

url() { echo "postgresql+psycopg://ftlab@${host}:${port}/ftlab"; }

case "$action" in
  start)
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      mkdir -p "$dir" && chmod 700 "$dir"
      password=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
      printf '%s\n' "$password" > "$dir/.password"
      chmod 600 "$dir/.password"
      # Every connection, socket or TCP from a compute node, gives the password (from ~/.pgpass).
      initdb -D "$dir/data" -U ftlab --pwfile="$dir/.password" \
        --auth=scram-sha-256 >/dev/null
      echo "host all all 0.0.0.0/0 scram-sha-256" >> "$dir/data/pg_hba.conf"
      echo "host all all ::/0 scram-sha-256" >> "$dir/data/pg_hba.conf"
      touch "$HOME/.pgpass" && chmod 600 "$HOME/.pgpass"
      echo "*:${port}:*:ftlab:${password}" >> "$HOME/.pgpass"
      fresh=1
    fi
    # max_connections: every worker and every job holds a few (heartbeats, pruning reports).
    pg_ctl -D "$dir/data" -l "$dir/server.log" -w \
      -o "-p $port -k $dir -c listen_addresses=* -c max_connections=300" start >/dev/null
    if [ "${fresh:-0}" = 1 ]; then createdb -h "$dir" -p "$port" -U ftlab ftlab; fi
    echo "PostgreSQL on ${host}:${port}, data in $dir/data. Start workers with:"
    echo "  python train.py -m hparams_search=optuna hydra.sweeper.storage=$(url) ..."
    echo "Watch it live: optuna-dashboard $(url)"
    ;;
  url) url ;;
  stop) pg_ctl -D "$dir/data" -m fast -w stop ;;
  *) echo "usage: $0 start|url|stop [DIR] [PORT]" >&2; exit 2 ;;
esac
