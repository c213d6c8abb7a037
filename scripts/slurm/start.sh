#!/usr/bin/env bash
# start.sh DIR: starts a one-node Slurm cluster on loopback, without systemd (but for
# SLURMD_UNIT, below), with every file it needs in DIR (made if missing; short, since
# munge's socket path must fit in sun_path):
#
#   DIR/slurm.conf      the configuration (clients: SLURM_CONF=DIR/slurm.conf)
#   DIR/munge/          munged's key, socket, pid, log and seed files
#   DIR/state, spool/   slurmctld's state, slurmd's spool
#   DIR/log/            the daemons' logs and stdout/stderr
#   DIR/pids            one line per daemon: NAME PID STARTTIME (field 22 of /proc/PID/stat)
#   DIR/units           the systemd units stop.sh stops (only with SLURMD_UNIT)
#
# Daemons, in order: munged (as the user munge, with a key of its own), slurmctld and
# `slurmd -N localhost`, all as root in sessions of their own (slurmd in a systemd service
# with SLURMD_UNIT). The script returns once the
# node is idle (or stops what it started and fails, printing the logs); stop.sh DIR stops
# exactly the processes DIR/pids names. The node is NodeName=localhost NodeAddr=127.0.0.1
# with the CPUs and memory `slurmd -C` reports, ProctrackType=proctrack/pgid and KillWait=5;
# jobs stay known to `scontrol show job` for an hour (MinJobAge), as there is no accounting
# database. Ports are picked at random below the ephemeral range and checked free, so
# clusters started in parallel do not clash.
#
# Environment:
#   SLURM_CGROUP=CG       a cgroup2 directory: each daemon starts in a leaf CG/NAME of its own
#                         (made here), so whatever a job leaves behind is in CG/slurmd
#   SLURM_PROCTRACK=P     ProctrackType (default proctrack/pgid)
#   SLURM_KILL_WAIT=N     KillWait in seconds (default 5)
#   SLURM_EPILOG=PATH     Epilog (run as root on the node after each job)
#   SLURM_CONF_EXTRA=...  lines appended to slurm.conf as they are
#   SLURM_CGROUP_CONF=... the contents of DIR/cgroup.conf, if set (for proctrack/cgroup)
#   SLURM_TASK_PLUGIN=P   TaskPlugin (default task/none; task/cgroup applies --mem)
#   SLURM_SELECT_PARAMS=P SelectTypeParameters (default CR_CPU; CR_CPU_Memory for --mem)
#   SLURMD_UNIT=NAME      slurmd runs as the transient systemd service NAME.service with
#                         Delegate=yes (systemd-run), as Slurm's cgroup/v2 documentation
#                         asks of slurmd where systemd manages the cgroup tree. The plugin puts the
#                         steps in a scope it makes over D-Bus and never removes, with a
#                         `slurmstepd infinity` in it: system.slice/localhost_slurmstepd.scope
#                         (Debian's slurmd, built for several slurmd per node, prefixes the
#                         node's name; slurmstepd.scope otherwise). start.sh refuses to start
#                         while such a scope exists (one such cluster per machine), and
#                         stop.sh stops slurmd's service and the scope (DIR/units).
#
# Shared by corral's tests (tests/containment/slurm.rs); the recipe is docs/slurm.md.
set -euo pipefail
# munged, slurmctld and slurmd are in /usr/sbin, which a user's PATH may lack.
export PATH=$PATH:/usr/sbin:/sbin

dir=${1:?usage: start.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

for program in munged mungekey slurmctld slurmd scontrol sinfo setpriv setsid ${SLURMD_UNIT:+systemd-run systemctl}; do
  command -v "$program" >/dev/null || {
    echo "start.sh: $program not found (Debian: slurmctld slurmd slurm-client munge)" >&2
    exit 2
  }
done
id munge >/dev/null 2>&1 || { echo "start.sh: no user munge (Debian package munge)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "start.sh: needs root" >&2; exit 2; }
if [ -e "$dir/pids" ]; then
  echo "start.sh: $dir/pids exists: a cluster was started here (stop.sh $dir first)" >&2
  exit 2
fi
stepd_scopes="localhost_slurmstepd.scope slurmstepd.scope"
for scope in ${SLURMD_UNIT:+$stepd_scopes}; do
  if systemctl is-active --quiet "$scope"; then
    echo "start.sh: $scope is active: another cluster's steps run here" >&2
    exit 2
  fi
done

started=""
fail() {
  echo "start.sh: $*" >&2
  for log in "$dir"/log/* "$dir/munge/munged.log"; do
    [ -f "$log" ] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }
  done
  if [ -n "$started" ]; then "$here/stop.sh" "$dir" >&2 || true; fi
  exit 1
}

# A TCP port in 10000-29999 (below the kernel's ephemeral range, so no outgoing connection
# takes it meanwhile) that no socket uses now.
free_port() {
  local port hex
  for _ in $(seq 100); do
    port=$((10000 + RANDOM % 20000))
    hex=$(printf ':%04X ' "$port")
    if ! cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -q "$hex"; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

# The start time of PID (field 22 of /proc/PID/stat), which tells it from a later process
# given the same PID.
start_time() {
  local stat rest
  stat=$(cat "/proc/$1/stat") || return 1
  rest=${stat##*) }
  # shellcheck disable=SC2086 # split the fields
  set -- $rest
  echo "${20}"
}

# launch NAME COMMAND...: starts COMMAND in a session of its own (in the leaf
# SLURM_CGROUP/NAME if set), stdout and stderr to DIR/log/NAME.out, and records its PID.
# setsid(1) does not fork here (a background job of a non-interactive shell does not lead a
# process group), nor does the `sh -c ... exec`, so $! is the daemon's PID; it is our
# unreaped child while we read its start time, so the PID cannot be another process's yet.
launch() {
  local name=$1 pid cg=""
  shift
  if [ -n "${SLURM_CGROUP:-}" ]; then
    cg=$SLURM_CGROUP/$name
    mkdir -p "$cg"
  fi
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid sh -c 'if [ -n "$0" ]; then echo $$ >"$0/cgroup.procs" || exit 125; fi; exec "$@"' \
    "$cg" "$@" </dev/null >"$dir/log/$name.out" 2>&1 &
  pid=$!
  echo "$name $pid $(start_time "$pid")" >>"$dir/pids"
  started=1
}

# launch_unit NAME UNIT COMMAND...: starts COMMAND as the transient service UNIT.service
# with Delegate=yes, stdout and stderr to DIR/log/NAME.out, and records its main PID (read
# once systemd-run has seen it exec: a process of the unit, which systemd has not reaped).
launch_unit() {
  local name=$1 unit=$2.service pid
  shift 2
  # shellcheck disable=SC2086 # one word per scope
  printf '%s\n' "$unit" $stepd_scopes >>"$dir/units"
  started=1
  systemd-run --quiet --collect --unit="$unit" --service-type=exec -p Delegate=yes \
    -p "StandardOutput=file:$dir/log/$name.out" -p "StandardError=file:$dir/log/$name.out" \
    -- "$@" || fail "systemd-run $unit failed"
  pid=$(systemctl show -p MainPID --value "$unit")
  [ "${pid:-0}" -gt 1 ] || fail "$unit has no main process"
  echo "$name $pid $(start_time "$pid")" >>"$dir/pids"
}

# wait_for WHAT SECONDS COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local what=$1 tries=$(($2 * 10))
  shift 2
  while ! "$@" >/dev/null 2>&1; do
    tries=$((tries - 1))
    [ "$tries" -gt 0 ] || fail "$what: not ready in time"
    sleep 0.1
  done
}

alive() { # NAME: the recorded daemon NAME still runs
  local pid start
  read -r _ pid start < <(grep "^$1 " "$dir/pids")
  [ "$(start_time "$pid" 2>/dev/null)" = "$start" ] && ! grep -q '^[^)]*) Z' "/proc/$pid/stat"
}

mkdir -p "$dir/log" "$dir/state" "$dir/spool" "$dir/munge"
chmod 755 "$dir"

# munge: a key of this cluster's own; munged refuses a key or socket directory that others
# can write.
chown munge:munge "$dir/munge"
chmod 755 "$dir/munge"
key=$dir/munge/munge.key
[ -e "$key" ] || setpriv --reuid=munge --regid=munge --init-groups mungekey -c -k "$key"
socket=$dir/munge/munge.socket
launch munged setpriv --reuid=munge --regid=munge --init-groups \
  munged -F --key-file="$key" --socket="$socket" --pid-file="$dir/munge/munged.pid" \
  --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
munge_works() { munge -n -S "$socket" | unmunge -S "$socket"; }
wait_for munged 10 munge_works

ctld_port=$(free_port) || fail "no free port"
slurmd_port=$(free_port) || fail "no free port"
while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done
# CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.. RealMemory=..
hardware=$(slurmd -C | head -n 1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=' | tr '\n' ' ')
[ -n "$hardware" ] || fail "slurmd -C printed no hardware"

cat >"$dir/slurm.conf" <<CONF
# Written by scripts/slurm/start.sh: a one-node cluster on loopback.
ClusterName=corral
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
PlugStackConfig=$dir/plugstack.conf
ProctrackType=${SLURM_PROCTRACK:-proctrack/pgid}
TaskPlugin=${SLURM_TASK_PLUGIN:-task/none}
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=${SLURM_SELECT_PARAMS:-CR_CPU}
KillWait=${SLURM_KILL_WAIT:-5}
MinJobAge=3600
ReturnToService=2
MailProg=/bin/true
${SLURM_EPILOG:+Epilog=$SLURM_EPILOG}
NodeName=localhost NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
${SLURM_CONF_EXTRA:-}
CONF
: >"$dir/plugstack.conf"
if [ -n "${SLURM_CGROUP_CONF:-}" ]; then
  printf '%s\n' "$SLURM_CGROUP_CONF" >"$dir/cgroup.conf"
fi
export SLURM_CONF=$dir/slurm.conf

launch slurmctld slurmctld -D -c -f "$SLURM_CONF"
ctld_up() { alive slurmctld && scontrol ping | grep -q 'is UP'; }
wait_for slurmctld 20 ctld_up

if [ -n "${SLURMD_UNIT:-}" ]; then
  launch_unit slurmd "$SLURMD_UNIT" slurmd -D -N localhost -f "$SLURM_CONF"
else
  launch slurmd slurmd -D -N localhost -f "$SLURM_CONF"
fi
node_idle() { alive slurmd && [ "$(sinfo -h -n localhost -o %t)" = idle ]; }
wait_for "slurmd (node localhost idle)" 20 node_idle

echo "SLURM_CONF=$SLURM_CONF"
