#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the tests marked `slurm` (tests/test_slurm.py).
#
#   .ci/slurm_cluster.sh start    install slurm-wlm + munge if missing (Debian, as root), write a slurm.conf with this
#                                 machine's hostname and CPUs, start munged, slurmctld and slurmd, and wait until
#                                 `sinfo` shows the node idle (at most $SLURM_CLUSTER_WAIT s, default 90)
#   .ci/slurm_cluster.sh stop     stop the daemons this script started and remove its files
#   .ci/slurm_cluster.sh status   exit 0 when the node is up (idle or busy)
#
# Idempotent: `start` on a running cluster only checks it; `stop` on a stopped one does nothing. State, spool and
# logs live in $SLURM_CLUSTER_DIR (default $TMPDIR/theory_sim-slurm); /etc/slurm/slurm.conf becomes a link to the
# config there (so sbatch/sinfo find it without SLURM_CONF), never replacing a slurm.conf this script did not write.
# When the cluster cannot start, the last line printed says why and the exit status is 1.
set -uo pipefail

DIR="${SLURM_CLUSTER_DIR:-${TMPDIR:-/tmp}/theory_sim-slurm}"
CONF="$DIR/slurm.conf"
SYSCONF=/etc/slurm/slurm.conf
MARK="# written by theory_sim .ci/slurm_cluster.sh"
WAIT="${SLURM_CLUSTER_WAIT:-90}"

die() { echo "slurm_cluster: cannot start the cluster: $*" >&2; exit 1; }
say() { echo "slurm_cluster: $*"; }

# without a config file sinfo would spend a minute looking for a controller in DNS
node_state() { [ -f "$CONF" ] && SLURM_CONF="$CONF" timeout 20 sinfo -h -N -o '%T' 2>/dev/null | head -1; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null && return 0
    [ "$(id -u)" -eq 0 ] \
        || die "slurm-wlm and munge are not installed and this is not root (apt-get install -y slurm-wlm munge)"
    command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get"
    say "installing slurm-wlm and munge"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } \
        >"${TMPDIR:-/tmp}/theory_sim-slurm-apt.log" 2>&1 \
        || die "apt-get install slurm-wlm munge failed (log: ${TMPDIR:-/tmp}/theory_sim-slurm-apt.log)"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create >/dev/null 2>&1 || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    if id munge >/dev/null 2>&1; then
        chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
        chmod 0400 /etc/munge/munge.key
        runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    else
        /usr/sbin/munged --force || die "munged did not start (see /var/log/munge/munged.log)"
    fi
    echo started >"$DIR/munged.ours"
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.25; done
    die "munged runs but munge -n | unmunge fails (see /var/log/munge/munged.log)"
}

write_conf() {
    local host node
    host="$(hostname -s)"
    # this machine's CPUs, sockets, cores and memory as slurmd itself sees them
    node="$(slurmd -C 2>/dev/null | head -1)"
    [ -n "$node" ] || node="NodeName=$host CPUs=$(nproc)"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat >"$CONF" <<EOF
$MARK
ClusterName=theorysim
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
# CPUs are the consumable resource; memory is not (a job without --mem would otherwise take the whole node)
SelectTypeParameters=CR_CPU
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# sacct -c reads finished jobs' states from this file (there is no accounting database here)
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
ReturnToService=2
# seconds between SIGTERM and SIGKILL at a time limit or scancel; finished jobs stay in squeue for MinJobAge s
KillWait=5
MinJobAge=600
MaxArraySize=10001
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    if [ -e "$SYSCONF" ] && ! grep -qF "$MARK" "$SYSCONF"; then
        die "$SYSCONF exists and was not written by this script (a real Slurm install?): not replacing it"
    fi
    mkdir -p "$(dirname "$SYSCONF")"
    ln -sfn "$CONF" "$SYSCONF"
}

start() {
    case "$(node_state)" in idle*|mix*|alloc*) say "already up ($(node_state)), config $CONF"; return 0;; esac
    install_packages
    mkdir -p "$DIR" || die "cannot create $DIR"
    [ "$(id -u)" -eq 0 ] || die "the daemons must be started as root"
    start_munge
    write_conf
    export SLURM_CONF="$CONF"
    pgrep -F "$DIR/slurmctld.pid" >/dev/null 2>&1 || slurmctld -i \
        || die "slurmctld did not start (log: $DIR/log/slurmctld.log)"
    local t=0 state=""
    # slurmd registers once at start: with no controller listening yet it would retry only a minute later
    until scontrol ping 2>/dev/null | grep -q "is UP"; do
        [ "$t" -lt "$((WAIT * 4))" ] || die "slurmctld does not answer after ${WAIT} s (log: $DIR/log/slurmctld.log)"
        sleep 0.25; t=$((t + 1))
    done
    pgrep -F "$DIR/slurmd.pid" >/dev/null 2>&1 || slurmd || die "slurmd did not start (log: $DIR/log/slurmd.log)"
    while [ "$t" -lt "$((WAIT * 4))" ]; do
        state="$(node_state)"
        case "$state" in idle*) say "up: node $(hostname -s) idle, config $CONF (linked from $SYSCONF)"; return 0;; esac
        sleep 0.25; t=$((t + 1))
    done
    tail -n 5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 2>/dev/null
    die "the node is not idle after ${WAIT} s (sinfo: '${state:-no answer}'); logs in $DIR/log"
}

stop() {
    if [ -f "$CONF" ]; then
        SLURM_CONF="$CONF" scancel --quiet --user="$(id -un)" 2>/dev/null
        for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
            local pid; pid="$(cat "$pidfile" 2>/dev/null)" || continue
            [ -n "$pid" ] && kill "$pid" 2>/dev/null
            for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            kill -9 "$pid" 2>/dev/null
        done
    fi
    if [ -f "$DIR/munged.ours" ] && [ -f /run/munge/munged.pid ]; then
        kill "$(cat /run/munge/munged.pid)" 2>/dev/null
    fi
    if [ -L "$SYSCONF" ] && [ "$(readlink "$SYSCONF")" = "$CONF" ]; then rm -f "$SYSCONF"; fi
    rm -rf "$DIR"
    say "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) case "$(node_state)" in idle*|mix*|alloc*) say "up: $(node_state)";; *) say "down"; exit 1;; esac ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
