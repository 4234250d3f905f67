#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, from Debian 12's packages, for wsa_lab's Slurm tests.
#
#   scripts/slurm/cluster.sh up      # install (first time) + configure + start; idempotent (~4 s when installed)
#   scripts/slurm/cluster.sh status  # exit 0 when sinfo and sacct answer
#   scripts/slurm/cluster.sh down    # stop the daemons this script started (by pid); packages stay installed
#
# What runs (all on 127.0.0.1, no systemd): munged, a private MariaDB (own datadir, port $WSA_SLURM_DB_PORT)
# for slurmdbd, slurmdbd (accounting, so `sacct` works: submitit polls it, and without it a killed job hangs
# the launcher forever), slurmctld and slurmd. One partition `debug` holding this node (all its CPUs).
# Needs root. Never purges packages (purging Slurm's dependencies removes git and build tools).
# Refuses to touch an /etc/slurm/slurm.conf that it did not write (a real cluster's node).
set -euo pipefail

STATE=${WSA_SLURM_STATE:-/var/lib/wsa_lab_slurm}   # pid files, logs, MariaDB datadir, Slurm state
DB_PORT=${WSA_SLURM_DB_PORT:-3399}
CLUSTER=wsalab
MARK="# written by wsa_lab scripts/slurm/cluster.sh"
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
DB_SOCK="$STATE/mysql/mysqld.sock"

log() { echo "slurm-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() { [[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts daemons)"; }

alive() {  # alive <pidfile>: the process named in the pid file is running
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {  # wait_for <seconds> <what> <command...>
  local seconds=$1 what=$2; shift 2
  for _ in $(seq $((seconds * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "$what did not come up in ${seconds}s (logs: $STATE/log/)"
}

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [[ ${#missing[@]} == 0 ]] && return 0
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >"$STATE/log/apt.log" 2>&1 || {
    apt-get update -q >>"$STATE/log/apt.log" 2>&1
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$STATE/log/apt.log" 2>&1 \
      || { tail -20 "$STATE/log/apt.log" >&2; die "apt-get install failed"; }
  }
}

write_configs() {
  local host node_line cpus
  host=$(hostname -s)
  if [[ -e /etc/slurm/slurm.conf ]] && ! grep -qF "$MARK" /etc/slurm/slurm.conf; then
    die "/etc/slurm/slurm.conf exists and was not written by this script; not touching a real cluster's config"
  fi
  # the node as slurmd sees it (CPUs, sockets, memory), minus the UpTime line
  node_line=$(slurmd -C | head -1)
  cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")
  mkdir -p /etc/slurm "$STATE/spool/slurmctld" "$STATE/spool/slurmd"
  cat >/etc/slurm/slurm.conf.tmp <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MailProg=/bin/true
EnforcePartLimits=ALL
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=300
SchedulerType=sched/backfill
StateSaveLocation=$STATE/spool/slurmctld
SlurmdSpoolDir=$STATE/spool/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$node_line NodeAddr=127.0.0.1 NodeHostname=$host State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP MaxCPUsPerNode=$cpus
EOF
  mv /etc/slurm/slurm.conf.tmp /etc/slurm/slurm.conf
  umask 077
  cat >/etc/slurm/slurmdbd.conf.tmp <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$STATE/db_password")
StorageLoc=slurm_acct_db
EOF
  chmod 600 /etc/slurm/slurmdbd.conf.tmp
  mv /etc/slurm/slurmdbd.conf.tmp /etc/slurm/slurmdbd.conf
  umask 022
}

start_munge() {
  if alive /run/munge/munged.pid; then return 0; fi
  [[ -s /etc/munge/munge.key ]] || { mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  touch "$STATE/log/munged.log" && chown munge:munge "$STATE/log/munged.log"
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid --log-file="$STATE/log/munged.log"
  wait_for 10 munged bash -c 'munge -n | unmunge'
}

start_mariadb() {
  if alive "$STATE/run/mariadbd.pid"; then return 0; fi
  local fresh=0
  if [[ ! -d $STATE/mysql/mysql ]]; then
    fresh=1
    mkdir -p "$STATE/mysql"
    mariadb-install-db --no-defaults --user=root --datadir="$STATE/mysql" >"$STATE/log/mariadb-install.log" 2>&1 \
      || { tail -20 "$STATE/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
  fi
  mariadbd --no-defaults --user=root --datadir="$STATE/mysql" --socket="$DB_SOCK" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --pid-file="$STATE/run/mariadbd.pid" --log-error="$STATE/log/mariadbd.log" \
    --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 >/dev/null 2>&1 &
  wait_for 30 mariadbd mariadb --no-defaults -S "$DB_SOCK" -u root -e "SELECT 1"
  if [[ $fresh == 1 ]] || ! mariadb --no-defaults -S "$DB_SOCK" -u root -N -e "SELECT user FROM mysql.user" | grep -qx slurm; then
    local pw; pw=$(cat "$STATE/db_password")
    mariadb --no-defaults -S "$DB_SOCK" -u root -e "
      CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
      CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pw';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
      FLUSH PRIVILEGES;"
  fi
}

start_slurm() {
  if ! alive "$STATE/run/slurmdbd.pid"; then
    /usr/sbin/slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
  fi
  if ! alive "$STATE/run/slurmctld.pid"; then
    /usr/sbin/slurmctld
    wait_for 30 slurmctld scontrol ping
  fi
  if ! alive "$STATE/run/slurmd.pid"; then
    /usr/sbin/slurmd
  fi
  # the node answers and is usable (idle / mixed / allocated), and accounting knows the cluster
  wait_for 30 "the node" bash -c "sinfo -h -N -o %T | grep -Eq '^(idle|mixed|allocated|completing)'"
  wait_for 30 "sacct" sacct -n -X -S now
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
}

up() {
  need_root
  local t0=$SECONDS
  mkdir -p "$STATE/log" "$STATE/run"
  [[ -s $STATE/db_password ]] || (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$STATE/db_password")
  install_packages
  write_configs
  start_munge
  start_mariadb
  start_slurm
  # a node left DOWN/DRAIN by an earlier unclean stop comes back
  scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
  log "up in $((SECONDS - t0)) s: $(sinfo -h -o '%P %D node(s) %c CPUs %T')"
}

pid_file() { if [[ $1 == munged ]]; then echo /run/munge/munged.pid; else echo "$STATE/run/$1.pid"; fi; }

stop_pid() {  # stop_pid <name>: SIGTERM the pid in its pid file, wait, then SIGKILL
  local file pid
  file=$(pid_file "$1")
  [[ -s $file ]] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$file"
}

down() {
  need_root
  # cancel what is still queued or running, so no job outlives the cluster
  if alive "$(pid_file slurmctld)"; then scancel --quiet --full -u root 2>/dev/null || true; sleep 1; fi
  for name in slurmd slurmctld slurmdbd mariadbd munged; do stop_pid "$name"; done
  log "down (packages, configs and $STATE kept)"
}

status() {
  for name in munged mariadbd slurmdbd slurmctld slurmd; do
    if alive "$(pid_file "$name")"; then echo "$name: running (pid $(cat "$(pid_file "$name")"))"; else echo "$name: stopped"; fi
  done
  sinfo >/dev/null 2>&1 && sacct -n -X -S now >/dev/null 2>&1
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
