#!/usr/bin/env bash
# stop.sh DIR: stops the cluster that start.sh DIR started, and only its processes.
#
# 1. Jobs still running are cancelled (`scancel`), and waited for up to KillWait + 10 s.
# 2. `scontrol shutdown` asks slurmctld and slurmd to exit; one still running 5 s later gets
#    SIGTERM (its own stop signal), and SIGKILL 10 s after that. munged gets SIGTERM, and
#    SIGKILL if it still runs 10 s later.
# 3. The systemd units DIR/units names (start.sh's SLURMD_UNIT: slurmd's service, and the
#    scope Slurm's cgroup/v2 plugin made for the steps and left) are stopped
#    (`systemctl stop`: SIGTERM, then SIGKILL to what is left in their cgroups; systemd
#    removes the cgroups) and their failed state reset.
# 4. Every daemon DIR/pids names must then be gone.
#
# A PID is signalled only while /proc/PID/stat shows the start time recorded at launch and
# the process is no zombie: the recorded process itself, never a later process given the
# same PID. PIDs <= 1 are never signalled; no process group is.
#
# Exits 0 once every recorded daemon is gone (1 if one survived); DIR stays, with the logs.
set -uo pipefail
export PATH=$PATH:/usr/sbin:/sbin

dir=${1:?usage: stop.sh DIR}
[ -f "$dir/pids" ] || exit 0
export SLURM_CONF=$dir/slurm.conf

start_time() {
  local stat rest
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  rest=${stat##*) }
  # shellcheck disable=SC2086 # split the fields
  set -- $rest
  # A zombie has exited: it is no longer the daemon, and signalling it does nothing.
  [ "$1" != Z ] || return 1
  echo "${20}"
}

# running NAME: prints the PID of the recorded daemon NAME if it still runs.
running() {
  local name pid start
  while read -r name pid start; do
    [ "$name" = "$1" ] || continue
    [ "$pid" -gt 1 ] 2>/dev/null || continue
    [ "$(start_time "$pid")" = "$start" ] && echo "$pid"
  done <"$dir/pids"
}

# signal NAME SIG: sends SIG to the recorded daemon NAME if it still runs.
signal() {
  local pid
  pid=$(running "$1")
  [ -n "$pid" ] && kill "-$2" "$pid" 2>/dev/null
}

# wait_gone SECONDS NAME...: waits until none of the daemons runs; false at the deadline.
wait_gone() {
  local tries=$(($1 * 10)) name left
  shift
  while :; do
    left=""
    for name in "$@"; do [ -n "$(running "$name")" ] && left="$left $name"; done
    [ -z "$left" ] && return 0
    tries=$((tries - 1))
    [ "$tries" -gt 0 ] || { echo "stop.sh: still running:$left" >&2; return 1; }
    sleep 0.1
  done
}

if [ -n "$(running slurmctld)" ]; then
  kill_wait=$(sed -n 's/^KillWait=//p' "$SLURM_CONF" 2>/dev/null)
  jobs=$(timeout 10 squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    # shellcheck disable=SC2086 # one word per job id
    timeout 10 scancel $jobs 2>/dev/null
    tries=$(((${kill_wait:-5} + 10) * 10))
    while [ -n "$(timeout 10 squeue -h -o %i 2>/dev/null)" ] && [ "$tries" -gt 0 ]; do
      tries=$((tries - 1))
      sleep 0.1
    done
  fi
  timeout 10 scontrol shutdown >/dev/null 2>&1
fi
# slurmctld relays the shutdown to slurmd, and may exit before that message is through: a
# daemon still running after 5 s gets SIGTERM, its own stop signal.
if ! wait_gone 5 slurmctld slurmd; then
  signal slurmctld TERM
  signal slurmd TERM
  wait_gone 10 slurmctld slurmd || { signal slurmctld KILL; signal slurmd KILL; }
fi
signal munged TERM
wait_gone 10 munged || signal munged KILL
if [ -f "$dir/units" ]; then
  sort -u "$dir/units" | while read -r unit; do
    timeout 30 systemctl stop "$unit" 2>/dev/null
    timeout 10 systemctl reset-failed "$unit" 2>/dev/null
  done
fi
wait_gone 5 slurmctld slurmd munged
