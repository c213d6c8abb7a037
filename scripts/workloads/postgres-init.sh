#!/bin/sh
# postgres-init.sh DIR: creates a PostgreSQL 15 cluster in DIR/data, owned by the user
# `postgres` (PostgreSQL refuses to run as root). Slow (a second or more): run it once,
# outside anything timed. DIR must exist; it is made traversable for that user.
set -eu
dir=$1
bin=${PG_BIN:-/usr/lib/postgresql/15/bin}
user=${PG_USER:-postgres}
chmod 755 "$dir"
mkdir -p "$dir/data" "$dir/run"
chown "$user:" "$dir/data" "$dir/run"
chmod 700 "$dir/data"
cd "$dir"
setpriv --reuid="$user" --regid="$user" --init-groups \
    "$bin/initdb" -D "$dir/data" --auth=trust --no-sync -U postgres -E UTF8 --locale=C \
    >"$dir/initdb.log" 2>&1
