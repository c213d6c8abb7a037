#!/bin/sh
# postgres-start.sh DIR PORT: starts the cluster that postgres-init.sh made in DIR/data
# through its control program, `pg_ctl start -w`, as the user `postgres`. pg_ctl starts the
# postmaster in a session of its own (setsid) and returns once the server accepts
# connections; the postmaster and its background processes (checkpointer, walwriter, ...)
# stay behind. It listens on no TCP address, only on the Unix socket DIR/run/.s.PGSQL.PORT.
set -eu
dir=$1
port=$2
bin=${PG_BIN:-/usr/lib/postgresql/15/bin}
user=${PG_USER:-postgres}
cd "$dir"
exec setpriv --reuid="$user" --regid="$user" --init-groups \
    "$bin/pg_ctl" -D "$dir/data" -l "$dir/run/postgres.log" -w -t 60 \
    -o "-k $dir/run -p $port -c listen_addresses= -c fsync=off" start
