#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests (Debian's slurm-wlm + munge).
#
#   scripts/slurm_cluster.sh start    # install if needed, configure, start daemons, wait for the node
#   scripts/slurm_cluster.sh stop     # stop slurmd, slurmctld, munged (no-op if nothing runs)
#   scripts/slurm_cluster.sh status   # print sinfo; non-zero exit if the cluster is not up
#   scripts/slurm_cluster.sh hold PID     # PID (a test suite) uses the cluster: a release by another
#   scripts/slurm_cluster.sh release PID  # suite stops it only when no live holder is left
#
# Two test suites at once share the one cluster: start, stop, hold and release take a lock, so
# they never race, and the partition lets jobs share CPUs (OverSubscribe), so one suite's jobs
# never wait on the other's.
# Config, state, spool and logs live in $STUDYLIB_SLURM_DIR (default /tmp/studylib-slurm).
# /etc/slurm/slurm.conf is made a symlink to our config so clients (sbatch from submitit)
# find it without SLURM_CONF; `start` also prints the export line for callers who want it.
# Needs root (apt-get, daemons run as SlurmUser=root). Job state survives stop/start (running
# jobs' slurmstepd processes are not killed by stop); delete the state folder for a clean slate.
set -euo pipefail

DIR="${STUDYLIB_SLURM_DIR:-/tmp/studylib-slurm}"
CONF="$DIR/slurm.conf"
export SLURM_CONF="$CONF"
MUNGE_PID=/run/munge/munged.pid
HOST="$(hostname -s)"

log() { echo "[slurm_cluster] $*" >&2; }

# The machine's CPUs (not `nproc`, which OMP_NUM_THREADS lowers: a node of 1 CPU never runs a 2-task job).
cpus() { getconf _NPROCESSORS_ONLN; }

# Is the node up and schedulable (idle, mixed or allocated)?
node_up() {
  if [[ ! -f "$CONF" ]] || ! command -v sinfo >/dev/null; then return 1; fi
  timeout 5 sinfo -h -n "$HOST" -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)$'
}

install_packages() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  log "installing slurm-wlm and munge with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

start_munge() {
  # A munge key is needed by munged; the package usually creates one, create it if not.
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
  chmod 0400 /etc/munge/munge.key
  chmod 0755 /run/munge  # clients (any user) must reach the socket
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged 9>&-
  fi
}

write_config() {
  mkdir -p "$DIR"/{state,spool,log} /etc/slurm
  local mem
  mem=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)  # MB, ~10% left for the OS
  cat >"$CONF" <<EOF
# Written by scripts/slurm_cluster.sh: a one-node test cluster on $HOST.
ClusterName=studylib
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may run again (default 120 s).
AuthInfo=cred_expire=10
MailProg=/bin/true
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Let jobs be requeued (scontrol requeue, submitit's preemption/timeout handling).
JobRequeue=1
ReturnToService=2
# Fast turnaround for tests.
SlurmdTimeout=30
MinJobAge=300
KillWait=5
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(cpus) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
  # Clients without SLURM_CONF (e.g. submitit's sbatch) read /etc/slurm/slurm.conf.
  if [[ -f /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]]; then
    mv /etc/slurm/slurm.conf /etc/slurm/slurm.conf.bak
  fi
  ln -sfn "$CONF" /etc/slurm/slurm.conf
}

start() {
  if node_up && grep -q "CPUs=$(cpus) " "$CONF" && grep -q "OverSubscribe=FORCE" "$CONF"; then
    log "already up"
    echo "export SLURM_CONF=$CONF"
    return
  fi
  install_packages
  start_munge
  stop_slurm  # clear half-started daemons from an earlier failed start
  write_config
  slurmctld -f "$CONF" 9>&-   # the daemons must not keep the lock
  slurmd -f "$CONF" 9>&-
  # Wait for the node to register; resume it if it came back DOWN/DRAINED.
  for _ in $(seq 60); do
    if node_up; then
      log "up: $(sinfo -h -o '%P %D %T %c cpus %m MB')"
      echo "export SLURM_CONF=$CONF"
      return
    fi
    if sinfo -h -n "$HOST" -o %T 2>/dev/null | grep -Eq 'down|drain'; then
      scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true
    fi
    sleep 1
  done
  log "ERROR: node $HOST not idle after 60 s; last log lines:"
  tail -n 20 "$DIR"/log/slurmctld.log "$DIR"/log/slurmd.log >&2 || true
  exit 1
}

# kill_pidfile FILE NAME: TERM the pid in FILE if it is still NAME, wait (up to 10 s) for it to exit.
kill_pidfile() {
  local pid
  [[ -f "$1" ]] || return 0
  pid=$(cat "$1")
  if [[ "$(ps -o comm= -p "$pid" 2>/dev/null)" == "$2" ]] && kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

stop_slurm() {
  kill_pidfile "$DIR/slurmd.pid" slurmd
  kill_pidfile "$DIR/slurmctld.pid" slurmctld
}

stop() {
  stop_slurm
  kill_pidfile "$MUNGE_PID" munged
  log "stopped"
}

# hold PID / release PID: the suites using the cluster, a file each under $DIR/holders.
hold() { mkdir -p "$DIR/holders" && touch "$DIR/holders/$1"; }

release() {
  rm -f "$DIR/holders/$1"
  local pid
  for pid in $(ls "$DIR/holders" 2>/dev/null); do
    if kill -0 "$pid" 2>/dev/null; then log "kept up: suite $pid still uses it"; return; fi
    rm -f "$DIR/holders/$pid"
  done
  stop
}

status() {
  node_up || { log "not up"; exit 1; }
  sinfo
}

mkdir -p "$DIR"
exec 9>"$DIR.lock"
case "${1:-}" in
  start) flock 9; start ;;
  stop) flock 9; stop ;;
  hold) flock 9; hold "${2:?hold PID}" ;;
  release) flock 9; release "${2:?release PID}" ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status|hold PID|release PID" >&2; exit 2 ;;
esac
