#!/usr/bin/env bash
# stop.sh — stop the cluster started by start.sh, by its pid files only.
#   usage: stop.sh RUNDIR
#   env:   SLURM_CLEAN=1  also delete RUNDIR afterwards
# Order: slurmd, slurmctld (it flushes pending records to slurmdbd),
# slurmdbd, mariadbd, munged last (the others need it while shutting down).
set -uo pipefail
export PATH=$PATH:/usr/sbin:/sbin
D=${1:?usage: stop.sh RUNDIR}
[ -d "$D" ] || { echo "stop.sh: no such dir $D" >&2; exit 0; }

stop_pidfile() {  # stop_pidfile NAME PIDFILE
  local name=$1 pf=$2 pid i
  [ -s "$pf" ] || return 0
  pid=$(cat "$pf")
  # only signal it if that pid is still the daemon we started
  if kill -0 "$pid" 2>/dev/null && grep -q "$name" "/proc/$pid/comm" 2>/dev/null; then
    kill -TERM "$pid"
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "stop.sh: $name ($pid) ignored SIGTERM for 10 s, sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null
    fi
    echo "stopped $name ($pid)"
  fi
  rm -f "$pf"
}

# Cancel whatever is still queued or running (a test that timed out) before the
# daemons go, so no job process outlives them.
if [ -f "$D/slurm.conf" ] && [ -s "$D/slurmctld.pid" ]; then
  export SLURM_CONF=$D/slurm.conf
  if scancel --user="$(id -un)" 2>/dev/null; then
    for i in $(seq 1 100); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.1; done
  fi
fi

stop_pidfile slurmd    "$D/slurmd.pid"
stop_pidfile slurmctld "$D/slurmctld.pid"   # its child slurmscriptd exits with it
stop_pidfile slurmdbd  "$D/slurmdbd.pid"
stop_pidfile mariadbd  "$D/mysql/mysqld.pid"
stop_pidfile munged    "$D/munge/munged.pid"

# the socket/spool dir that start.sh made under /tmp
if [ -s "$D/munge/sockdir" ]; then
  sd=$(cat "$D/munge/sockdir")
  case "$sd" in /tmp/slurm-sock.*) rm -rf "$sd" ;; esac
  rm -f "$D/munge/sockdir"
fi

if [ "${SLURM_CLEAN:-0}" = 1 ]; then rm -rf "$D"; echo "removed $D"; fi
