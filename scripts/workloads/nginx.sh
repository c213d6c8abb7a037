#!/bin/sh
# nginx.sh DIR PORT: writes an nginx configuration into DIR (which must exist) and starts
# nginx with it. nginx daemonizes: the master forks, the parent exits (so this script
# returns 0 once the master is up), and the master forks 2 workers. Everything nginx writes
# (pid file, logs, temp files) goes to DIR; it listens on 127.0.0.1:PORT only and serves
# DIR/html/index.html.
#
# Shared by corral's integration tests (tests/containment/workloads.rs) and the bench
# (bench/benches/peers/workloads.rs).
set -eu
dir=$1
port=$2
nginx=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
mkdir -p "$dir/html" "$dir/logs" "$dir/tmp"
echo "corral workload nginx" >"$dir/html/index.html"
# Workers run as nobody: they only read DIR/html (made world-readable) and inherit the
# sockets and log files the master (root) opened.
chmod 755 "$dir" "$dir/html"
chmod 644 "$dir/html/index.html"
cat >"$dir/nginx.conf" <<CONF
daemon on;
master_process on;
worker_processes 2;
user nobody nogroup;
pid $dir/nginx.pid;
error_log $dir/logs/error.log;
events { worker_connections 64; }
http {
    access_log $dir/logs/access.log;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    server {
        listen 127.0.0.1:$port;
        root $dir/html;
    }
}
CONF
# -p: the prefix for relative paths; -g is not needed since the config says it all.
exec "$nginx" -p "$dir" -c "$dir/nginx.conf"
