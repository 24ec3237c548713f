#!/usr/bin/env bash
# start.sh — start a throw-away single-node SLURM cluster entirely under RUNDIR, for
# tests/test_slurm.py (the workflow through snakemake --executor slurm).
#
#   usage: start.sh RUNDIR
#   env:   SLURM_ACCOUNTING=dbd|none  dbd (default): munge + mariadb + slurmdbd +
#                                      slurmctld + slurmd, so `sacct` works.
#                                      none: no database, sacct prints "Slurm
#                                      accounting storage is disabled" (rc 1);
#                                      use `--slurm-status-command squeue` then.
#          SLURMCTLD_PORT (6817) SLURMD_PORT (6818) SLURMDBD_PORT (6819)
#          MYSQL_PORT (3307)               — change them to run two clusters at once.
#
# Needs (Debian 12, as root):
#   apt-get install -y --no-install-recommends slurm-wlm munge            # always
#   apt-get install -y --no-install-recommends slurmdbd mariadb-server    # for sacct
# Runs as root (CI) or as any user; daemons run as that user (SlurmUser=$ME).
# No systemd, no cgroups; writes only RUNDIR and one short /tmp/slurm-sock.XXXXXX
# (unix sockets + slurmd spool), which stop.sh removes.
#
# After it returns:  source RUNDIR/env.sh   (exports SLURM_CONF, prepends RUNDIR/bin
# to PATH) and sinfo/srun/sbatch/squeue/sacct work.  Stop with stop.sh RUNDIR.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin        # the daemons live there; a non-root PATH may lack it

D=${1:?usage: start.sh RUNDIR}
ACCT=${SLURM_ACCOUNTING:-dbd}
CTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
DBD_PORT=${SLURMDBD_PORT:-6819}
MYSQL_PORT=${MYSQL_PORT:-3307}

# Daemons run as whoever runs this script. As root: normal cluster, jobs run as
# the submitting user. As a non-root user U: everything works too (tested as
# the 'slurm' user), but slurmd cannot setuid, so every job runs as U.
ME=$(id -un)
for b in munged mungekey slurmctld slurmd sinfo; do
  command -v "$b" >/dev/null || { echo "start.sh: $b missing (apt-get install slurm-wlm munge)" >&2; exit 1; }
done
if [ "$ACCT" = dbd ]; then
  for b in slurmdbd mariadbd mariadb-install-db mariadb-admin; do
    command -v "$b" >/dev/null || { echo "start.sh: $b missing (apt-get install slurmdbd mariadb-server)" >&2; exit 1; }
  done
fi

mkdir -p "$D"
D=$(cd "$D" && pwd)                      # absolute path; all config paths depend on it
if [ -e "$D/slurmctld.pid" ] || [ -e "$D/munge/munged.pid" ]; then
  echo "start.sh: $D seems in use (pid files present); run stop.sh first" >&2; exit 1
fi
mkdir -p "$D"/{state,log,bin,munge,mysql}
# on any failure below, stop whatever was already started (by pid files)
HERE=$(cd "$(dirname "$0")" && pwd)
trap 'echo "start.sh: failed (line $LINENO); stopping what was started; logs in $D/log" >&2; "$HERE/stop.sh" "$D" >&2' ERR

# Unix sockets go to a short private dir under /tmp, for two reasons:
#  * munged refuses a socket whose directory OR ANY ANCESTOR lacks o+x:
#    "Socket is inaccessible: execute permissions for all required on <dir>"
#    and pytest's /tmp/pytest-of-<user> is 0700;
#  * slurmd puts one unix socket per job step in SlurmdSpoolDir
#    (<node>_<jobid>.4294967291 for the batch step) and a path > 108 bytes
#    makes every launch fail: "_create_socket: Unix socket path '...' is too
#    long. (124 > 108)" -> srun "Task launch ... failed", sbatch jobs end up
#    "launch failed requeued held" (sbatch -W then waits forever).
# stop.sh removes this dir.
SOCKDIR=$(mktemp -d /tmp/slurm-sock.XXXXXX)
chmod 755 "$SOCKDIR"
mkdir -p "$SOCKDIR/spool"
echo "$SOCKDIR" > "$D/munge/sockdir"
SOCK=$SOCKDIR/munge.socket.2

# fail fast if another cluster (or anything) already listens on our ports
PORTS="$CTLD_PORT $SLURMD_PORT"
[ "$ACCT" = dbd ] && PORTS="$PORTS $DBD_PORT $MYSQL_PORT"
for p in $PORTS; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "start.sh: port $p already in use (set SLURMCTLD_PORT/SLURMD_PORT/SLURMDBD_PORT/MYSQL_PORT)" >&2
    false
  fi
done

H=$(hostname -s)                         # must resolve (here: /etc/hosts has 127.0.0.1 vm)

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
  local t=$1 what=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then echo "start.sh: timed out waiting for $what" >&2; return 1; fi
    sleep 0.2
  done
}

# ---------------------------------------------------------------- munge ----
# Private key + private socket; does not touch /etc/munge or /run/munge.
mungekey -c -f -k "$D/munge/munge.key"
chmod 600 "$D/munge/munge.key"
munged --key-file="$D/munge/munge.key" --socket="$SOCK" \
       --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" \
       --seed-file="$D/munge/munged.seed"          # daemonizes itself
wait_for 10 munged sh -c "munge -n -S '$SOCK' | unmunge -S '$SOCK'"

# ---------------------------------------------------------------- slurm.conf
# Node line: the CPUs from the hardware; memory is not scheduled (CR_Core), and
# the node claims 256 GB (config_overrides: slurmd does not drain it for having
# less), so jobs asking for the pipeline's real mem_mb (8 GB and more) are
# accepted on a small CI machine.
NCPU=$(nproc)
MEM=256000
if [ "$ACCT" = dbd ]; then
  ACCT_CONF="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$H
AccountingStoragePort=$DBD_PORT
# For slurmdbd, AccountingStoragePass names the MUNGE socket used on the
# slurmctld->slurmdbd and sacct/sacctmgr->slurmdbd connections. Without it they
# use /run/munge/munge.socket.2 (AuthInfo is NOT used there) and fail with
# 'Munge encode failed: Failed to access \"/run/munge/munge.socket.2\"'.
AccountingStoragePass=$SOCK
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT_CONF="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
cat > "$D/slurm.conf" <<EOF
# generated by start.sh
ClusterName=pipetest
SlurmctldHost=$H
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$ME
SlurmdUser=$ME
AuthType=auth/munge
AuthInfo=socket=$SOCK
CredType=cred/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$SOCKDIR/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
# no cgroups in this VM/container: linuxproc tracking, no task plugin
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
# keep finished jobs visible to squeue --states=all for 10 min
MinJobAge=600
$ACCT_CONF
NodeName=$H NodeAddr=127.0.0.1 CPUs=$NCPU Sockets=1 CoresPerSocket=$NCPU ThreadsPerCore=1 RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$D/slurm.conf

# The snakemake-executor-plugin-slurm-jobstep 0.6.1 strips every SLURM_* env var
# (SLURM_CONF included) before its nested `srun`; that srun then dies with
# "Could not establish a configuration source". This wrapper restores it.
# (Alternatives: pin the jobstep plugin to 0.6.0, or link /etc/slurm/slurm.conf.)
cat > "$D/bin/srun" <<EOF
#!/bin/sh
export SLURM_CONF=$D/slurm.conf
exec /usr/bin/srun "\$@"
EOF
chmod 755 "$D/bin/srun"
cat > "$D/env.sh" <<EOF
export SLURM_CONF=$D/slurm.conf
export PATH=$D/bin:\$PATH
EOF

# ------------------------------------------------------- mariadb + slurmdbd
if [ "$ACCT" = dbd ]; then
  if [ ! -d "$D/mysql/data/mysql" ]; then
    mariadb-install-db --no-defaults --user="$ME" --datadir="$D/mysql/data" \
      --auth-root-authentication-method=normal --skip-test-db \
      > "$D/mysql/install.log" 2>&1
  fi
  # --no-defaults: ignore /etc/mysql/*; TCP on 127.0.0.1 only (slurmdbd talks TCP)
  setsid mariadbd --no-defaults --user="$ME" --datadir="$D/mysql/data" \
    --socket="$SOCKDIR/mysqld.sock" --pid-file="$D/mysql/mysqld.pid" \
    --log-error="$D/mysql/mysqld.err" --bind-address=127.0.0.1 --port="$MYSQL_PORT" \
    --skip-name-resolve --performance-schema=OFF \
    --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
    --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
  wait_for 30 mariadbd mariadb-admin --no-defaults -S "$SOCKDIR/mysqld.sock" -uroot ping

  # slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF; it must be
  # mode 600 and owned by SlurmUser.
  cat > "$D/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$SOCK
DbdHost=$H
DbdPort=$DBD_PORT
SlurmUser=$ME
PidFile=$D/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$D/slurmdbd.conf"
  slurmdbd                                          # daemonizes, writes PidFile
  wait_for 30 slurmdbd sacctmgr -n list cluster     # succeeds (empty) once dbd answers
fi

# ------------------------------------------------------- slurmctld + slurmd
slurmctld            # daemonizes; registers cluster "proto" in slurmdbd on its own
slurmd
wait_for 30 "node idle" sh -c 'sinfo -h -o %T | grep -qx idle'
if [ "$ACCT" = dbd ]; then
  wait_for 30 "cluster registration" sh -c 'sacctmgr -n list cluster format=cluster | grep -q pipetest'
fi

echo "RUNDIR=$D"
echo "SLURM_CONF=$D/slurm.conf   (source $D/env.sh)"
printf '%-10s %s\n' munged "$(cat "$D/munge/munged.pid")"
if [ "$ACCT" = dbd ]; then
  printf '%-10s %s\n' mariadbd "$(cat "$D/mysql/mysqld.pid")" slurmdbd "$(cat "$D/slurmdbd.pid")"
fi
printf '%-10s %s\n' slurmctld "$(cat "$D/slurmctld.pid")" slurmd "$(cat "$D/slurmd.pid")"
sinfo
