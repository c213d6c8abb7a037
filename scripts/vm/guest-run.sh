#!/bin/sh
# Runs inside the VM (from corral-vm-payload.service, as root), from the 9p share:
#   share/target-dir   the host's target/debug path: the test binaries find corral,
#                      corral-testtree and corral-host there (corral-testkit's paths),
#                      and CARGO_TARGET_TMPDIR next to it
#   share/bin/         corral, corral-helper, corral-testtree, corral-host, vm-tests/<name>
#   share/payload.list one command a line: `TAG: COMMAND` (see scripts/vm/payload.list)
#   share/results/     NN-TAG-NAME.out (stdout+stderr), summary.tsv, started, finished
# The unit powers the VM off when this script ends.
set -u
S=/mnt/share
R=$S/results
mkdir -p "$R"
echo "payload: started at uptime $(cut -d' ' -f1 /proc/uptime)" | tee "$R/started"

T=$(cat "$S/target-dir")
mkdir -p "$T" "$(dirname "$T")/tmp"
cp -a "$S/bin/." "$T/"
chmod -R a+rX "$(dirname "$T")"
chmod 1777 "$(dirname "$T")/tmp"
# Every directory above the binaries must be traversable by the user too.
d=$T; while [ "$d" != / ]; do chmod a+x "$d"; d=$(dirname "$d"); done

{
  echo "== guest"; uname -a
  awk '$9=="cgroup2" || /- cgroup2 /' /proc/self/mountinfo
  echo "own cgroup: $(cat /proc/self/cgroup)"
  echo "root controllers: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
  echo "user@1000: $(systemctl is-active user@1000.service)"
} >"$R/guest-info.txt" 2>&1

per_test=${CORRAL_VM_PER_TEST:-$(cat "$S/per-test-timeout" 2>/dev/null || echo 900)}
path="$T/vm-tests:$T:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export CORRAL_REQUIRE_ALL=1 PATH="$path"
uenv="XDG_RUNTIME_DIR=/run/user/1000 DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/1000/bus CORRAL_REQUIRE_ALL=1 PATH=$path HOME=/home/corral"
cd /tmp

n=0
printf 'id\tstatus\tseconds\tline\n' >"$R/summary.tsv"
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in ''|'#'*) continue ;; esac
  tag=${line%%:*}
  cmd=${line#*:}
  cmd=${cmd# }
  [ "$tag" = "$line" ] && { tag=root; cmd=$line; }
  n=$((n + 1))
  # The first word that is not an assignment: `CORRAL_VM=1 limits_vm` is `limits_vm`.
  name=$(echo "$cmd" | awk '{for (i = 1; i <= NF; i++) if ($i !~ /=/) { print $i; exit }}' | tr -c 'A-Za-z0-9_.\n-' _)
  id=$(printf '%02d-%s-%s' "$n" "$tag" "$name")
  echo "payload: $id: $cmd" >/dev/console
  start=$(date +%s.%N)
  case "$tag" in
    root)
      # A delegated scope of the system manager: the cgroup subtree is ours to write.
      # No task limit: the suites run many process trees in parallel.
      # CORRAL_VM_RESULTS: where a test may leave figures for the bench (root's lines only:
      # the user cannot write the share).
      CORRAL_VM_RESULTS="$R" timeout -k 10 "$per_test" systemd-run --quiet --scope -p Delegate=yes -p TasksMax=infinity --unit="corral-vm-$id" \
        -- sh -c "$cmd" ;;
    root-plain)
      # Where the payload unit runs: a cgroup systemd manages, nothing delegated.
      timeout -k 10 "$per_test" sh -c "$cmd" ;;
    user-scope)
      # shellcheck disable=SC2086
      timeout -k 10 "$per_test" runuser -u corral -- env $uenv \
        systemd-run --user --quiet --scope -p Delegate=yes -p TasksMax=infinity -- sh -c "$cmd" ;;
    user-plain)
      # shellcheck disable=SC2086
      timeout -k 10 "$per_test" runuser -u corral -- env $uenv sh -c "$cmd" ;;
    *)
      echo "unknown tag '$tag' (root, root-plain, user-scope, user-plain)"; false ;;
  esac >"$R/$id.out" 2>&1 </dev/null
  status=$?
  secs=$(echo "$start $(date +%s.%N)" | awk '{printf "%.1f", $2 - $1}')
  printf '%s\t%s\t%s\t%s\n' "$id" "$status" "$secs" "$line" >>"$R/summary.tsv"
  echo "payload: $id: exit $status in ${secs}s" >/dev/console
done <"$S/payload.list"

# Leftovers: cgroups the tests made and did not remove, processes re-parented to PID 1.
{
  # The names .ci/run looks for, anywhere in the tree (a delegated scope is deep in it).
  find /sys/fs/cgroup -type d \( -name 'corral-test-*' -o -name 'corral-bench-*' -o -path '*/corral/*' \) 2>/dev/null
  ps -eo ppid=,pid=,stat=,args= | awk '$3 !~ /^Z/ && (($1==1 && /corral-testtree/) || ($4 ~ /(^|\/)corral$/ && $5=="__supervise"))'
} >"$R/leftovers.txt" 2>&1
echo "payload: finished at uptime $(cut -d' ' -f1 /proc/uptime)" | tee "$R/finished"
sync
