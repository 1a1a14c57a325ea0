#!/usr/bin/env bash
# Bring up / tear down a REAL single-node SLURM cluster on this machine, for
# tests and CI.
#
#   bash scripts/local_slurm.sh start    # install (if needed), configure, start, wait until usable
#   bash scripts/local_slurm.sh status   # print sinfo; exit 0 iff the node is usable
#   bash scripts/local_slurm.sh stop     # stop slurmd, slurmctld, munged (exit 0 even if not running)
#
# Assumptions: Debian (bookworm ships SLURM 22.05), run as root, no usable
# systemd/init -- the daemons are started directly.  The controller and the
# only compute node are this host ($(hostname -s)); the partition is "debug".
#
# Environment overrides (all optional):
#   LOCAL_SLURM_WAIT   seconds to wait for the node to become usable (default 60)
#   LOCAL_SLURM_MEM_MARGIN_MB  memory kept back from RealMemory (default 1024)
set -euo pipefail

SLURM_CONF_DIR=/etc/slurm
SLURM_CONF=$SLURM_CONF_DIR/slurm.conf
SLURM_LOG_DIR=/var/log/slurm
SLURMCTLD_LOG=$SLURM_LOG_DIR/slurmctld.log
SLURMD_LOG=$SLURM_LOG_DIR/slurmd.log
SLURMCTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
SLURMCTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
MUNGE_KEY=/etc/munge/munge.key
MUNGE_LOG=/var/log/munge/munged.log
MUNGE_PID=/run/munge/munged.pid
MUNGE_SOCKET=/run/munge/munge.socket.2
APT_LOG=/var/log/local_slurm_apt.log

WAIT_SECS=${LOCAL_SLURM_WAIT:-60}
MEM_MARGIN_MB=${LOCAL_SLURM_MEM_MARGIN_MB:-1024}
HOST=$(hostname -s)

log() { echo "[local_slurm] $*"; }
err() { echo "[local_slurm] ERROR: $*" >&2; }

# ---------------------------------------------------------------- helpers ---

# is_daemon PID NAME: true when PID is a live (not zombie) process named NAME.
# A killed daemon whose parent is init can linger as a zombie until init
# reaps it; it must not count as running.
is_daemon() {
    local pid=$1 name=$2 stat
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat /proc/"$pid"/comm 2>/dev/null)" == "$name" ]] || return 1
    stat=$(cat /proc/"$pid"/stat 2>/dev/null) || return 1
    # Field 3 (after the ")" closing the command name) is the state letter.
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# daemon_pids NAME PIDFILE: the pids of running NAME daemons -- the one in
# the pid file (which may be stale: its pid can be reused, hence the name
# check) and any other process with exactly that name (lost pid file).
daemon_pids() {
    local name=$1 pidfile=$2 pid
    {
        cat "$pidfile" 2>/dev/null || true
        echo
        pgrep -x "$name" || true
    } | sort -u | while read -r pid; do
        if is_daemon "$pid" "$name"; then echo "$pid"; fi
    done
}

running() { [[ -n "$(daemon_pids "$1" "$2")" ]]; }

# node_state: the node's state as sinfo reports it ("idle", "mixed", "down*",
# "drained", ...), or empty when the controller does not answer.
node_state() {
    timeout 10 sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n1 || true
}

usable_state() {
    case "$1" in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

show_log_tails() {
    local f
    for f in "$SLURMCTLD_LOG" "$SLURM_LOG_DIR/slurmctld.stderr" \
             "$SLURMD_LOG" "$SLURM_LOG_DIR/slurmd.stderr" \
             "$MUNGE_LOG" "$SLURM_LOG_DIR/munged.stderr"; do
        [[ -s $f ]] || continue
        echo "----- tail -n 30 $f -----" >&2
        tail -n 30 "$f" >&2 || true
    done
}

die() {
    err "$*"
    show_log_tails
    exit 1
}

print_log_locations() {
    log "logs: slurmctld=$SLURMCTLD_LOG slurmd=$SLURMD_LOG munged=$MUNGE_LOG" \
        "(daemon stderr: $SLURM_LOG_DIR/*.stderr; apt: $APT_LOG)"
}

# ---------------------------------------------------------------- install ---

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v munged >/dev/null && command -v sinfo >/dev/null; then
        return 0
    fi
    log "installing slurm-wlm and munge with apt-get (output in $APT_LOG)"
    # --no-install-recommends: the recommends pull in the -dev plugin
    # packages and friends, which a test cluster does not need.
    if ! { apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends slurm-wlm munge; } >"$APT_LOG" 2>&1; then
        tail -n 30 "$APT_LOG" >&2
        die "apt-get install of slurm-wlm/munge failed"
    fi
}

# ------------------------------------------------------------------ munge ---

setup_munge() {
    # The munge package creates the "munge" user; munged refuses to use a key
    # or directories that are not owned by the user it runs as.
    install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
    install -d -o munge -g munge -m 0711 /var/lib/munge
    # /run is a tmpfs on most machines, so the socket dir must be recreated.
    # 0755 so that any user (not only root) can reach the socket.
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating munge key $MUNGE_KEY"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$MUNGE_KEY" --force
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
}

start_munge() {
    if running munged "$MUNGE_PID" && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    # Running but not answering (e.g. key replaced under it): start afresh.
    stop_daemon munged "$MUNGE_PID"
    setup_munge
    # A socket left behind by a killed munged makes the new one refuse to bind.
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    log "starting munged (as user munge)"
    # Run as the munge user, as the Debian package does: munged then needs no
    # --force, and all its files stay owned by munge.
    runuser -u munge -- /usr/sbin/munged >"$SLURM_LOG_DIR/munged.stderr" 2>&1 ||
        die "munged failed to start"
    local _
    for _ in $(seq 1 20); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "munged started but munge -n | unmunge does not work"
}

# ------------------------------------------------------------------ slurm ---

write_slurm_conf() {
    local cpus mem_total mem
    cpus=$(nproc)
    mem_total=$(free -m | awk '/^Mem:/ {print $2}')
    # Keep a margin below the real size: slurmd drains the node ("Low
    # RealMemory") if RealMemory is larger than what it measures itself.
    mem=$((mem_total - MEM_MARGIN_MB))
    ((mem >= 256)) || mem=$((mem_total / 2))

    install -d -m 0755 "$SLURM_CONF_DIR"
    local tmp
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
# Written by scripts/local_slurm.sh -- single-node test cluster on $HOST.
ClusterName=local
SlurmctldHost=$HOST
# Both daemons as root: no separate service account to set up, and slurmd
# must be root anyway to run jobs as the submitting user.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Step credentials live 15 s instead of 120 s.  Slurm also holds a requeued
# job back for cred_expire+1 s before it may start again, so the default
# made "scontrol requeue" take over two minutes to rerun a job.
AuthInfo=cred_expire=15
CredType=cred/munge
MpiDefault=none
# linuxproc tracks job processes through /proc; unlike proctrack/cgroup it
# needs no cgroup hierarchy (containers/CI rarely give a usable one).
ProctrackType=proctrack/linuxproc
# task/none: no CPU binding and no cgroup confinement, again so that no
# cgroup plugin is ever loaded.
TaskPlugin=task/none
# Allocate single CPUs (not whole nodes), so several 1-CPU jobs run side by side.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# A job that becomes eligible by time (e.g. a requeued job, held back for
# cred_expire s) or by a finished dependency is picked up by a backfill pass;
# the default 30 s interval made requeue tests wait needlessly.  Measured from
# a job's end to its dependent's start: 6 s at bf_interval=5, 4 s at 1 (most
# of it the job's own Python start).  Cheap on one node.
SchedulerParameters=bf_interval=1
# No slurmdbd: no accounting (so no sacct), no per-job usage sampling.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# No mail on this machine; without this slurmctld logs "MailProg is invalid".
MailProg=/bin/true
# A node that was DOWN for any reason (e.g. slurmd killed, "Not responding")
# comes back by itself once slurmd registers with a valid configuration.
ReturnToService=2
# Batch jobs may be requeued (scontrol requeue, node failure).
JobRequeue=1
# Seconds between SIGTERM and SIGKILL when a job is cancelled / times out.
KillWait=30
# Finished jobs stay visible in squeue/scontrol show job for 300 s (there is
# no accounting database to ask afterwards).
MinJobAge=300
# Declare an unresponsive slurmd dead quickly (default is 300 s).
SlurmdTimeout=30
SlurmctldTimeout=30
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SLURMCTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$SLURMCTLD_LOG
SlurmdLogFile=$SLURMD_LOG
SlurmctldDebug=info
SlurmdDebug=info
# The node: real CPU count, RealMemory a bit below the machine's total.
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    if [[ -f $SLURM_CONF ]] && cmp -s "$tmp" "$SLURM_CONF"; then
        rm -f "$tmp"
        return 1 # unchanged
    fi
    install -m 0644 "$tmp" "$SLURM_CONF"
    rm -f "$tmp"
    log "wrote $SLURM_CONF"
    return 0 # changed
}

start_slurm_daemons() {
    install -d -m 0755 "$SLURM_LOG_DIR" "$SLURMD_SPOOL"
    # StateSaveLocation holds job state across controller restarts.
    install -d -m 0700 "$SLURMCTLD_SPOOL"
    if ! running slurmctld "$SLURMCTLD_PID"; then
        log "starting slurmctld"
        # Without -D slurmctld forks into the background once it is set up;
        # its stderr catches errors from before the log file is opened.
        /usr/sbin/slurmctld >"$SLURM_LOG_DIR/slurmctld.stderr" 2>&1 ||
            die "slurmctld failed to start"
    fi
    if ! running slurmd "$SLURMD_PID"; then
        log "starting slurmd"
        /usr/sbin/slurmd >"$SLURM_LOG_DIR/slurmd.stderr" 2>&1 ||
            die "slurmd failed to start"
    fi
}

wait_until_usable() {
    local deadline=$((SECONDS + WAIT_SECS)) state="" resumed=0
    while ((SECONDS < deadline)); do
        running slurmctld "$SLURMCTLD_PID" || die "slurmctld is not running"
        running slurmd "$SLURMD_PID" || die "slurmd is not running"
        state=$(node_state)
        if usable_state "$state"; then
            return 0
        fi
        case "$state" in
            # down/drain left over from an earlier run (e.g. "Not responding",
            # "Kill task failed"): put the node back in service, once.
            down* | drain* | fail*)
                if ((resumed == 0)); then
                    log "node $HOST is '$state'; resuming it"
                    scontrol update nodename="$HOST" state=resume || true
                    resumed=1
                fi
                ;;
        esac
        sleep 1
    done
    timeout 10 sinfo -N -l >&2 || true
    timeout 10 scontrol show node "$HOST" >&2 || true
    die "node $HOST not usable after ${WAIT_SECS}s (state: '${state:-no answer}')"
}

# --------------------------------------------------------------- commands ---

cmd_start() {
    [[ $(id -u) -eq 0 ]] || { err "must run as root"; exit 1; }
    install_packages
    install -d -m 0755 "$SLURM_LOG_DIR"
    print_log_locations

    if write_slurm_conf; then
        # A daemon still running with an older slurm.conf would disagree with
        # the file (and with the other daemon); restart it to read the new one.
        if running slurmctld "$SLURMCTLD_PID" || running slurmd "$SLURMD_PID"; then
            log "slurm.conf changed; restarting the slurm daemons"
            stop_daemon slurmd "$SLURMD_PID"
            stop_daemon slurmctld "$SLURMCTLD_PID"
        fi
    elif running munged "$MUNGE_PID" && running slurmctld "$SLURMCTLD_PID" &&
        running slurmd "$SLURMD_PID" && usable_state "$(node_state)"; then
        # Idempotent: same configuration and everything already up.
        log "SLURM is already up on $HOST:"
        timeout 10 sinfo
        return 0
    fi

    start_munge
    start_slurm_daemons
    wait_until_usable
    log "SLURM is up on $HOST:"
    timeout 10 sinfo
}

# stop_daemon NAME PIDFILE: SIGTERM, wait up to 15 s, then SIGKILL.
stop_daemon() {
    local name=$1 pidfile=$2 pids _
    mapfile -t pids < <(daemon_pids "$name" "$pidfile")
    if ((${#pids[@]} == 0)); then
        rm -f "$pidfile"
        return 0
    fi
    log "stopping $name (pid ${pids[*]})"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 30); do
        mapfile -t pids < <(daemon_pids "$name" "$pidfile")
        ((${#pids[@]} == 0)) && break
        sleep 0.5
    done
    if ((${#pids[@]} > 0)); then
        log "$name did not exit on SIGTERM; sending SIGKILL"
        kill -KILL "${pids[@]}" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
}

cmd_stop() {
    # slurmd first: it would otherwise log errors about the vanished controller.
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$SLURMCTLD_PID"
    stop_daemon munged "$MUNGE_PID"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    # Job steps that were running keep running under their slurmstepd and
    # reattach when slurmd starts again (job state is kept in
    # $SLURMCTLD_SPOOL); say so rather than killing them behind the user's back.
    if pgrep -x slurmstepd >/dev/null; then
        log "note: slurmstepd processes of running jobs are still alive:" \
            "$(pgrep -x slurmstepd | tr '\n' ' ')"
    fi
    log "stopped"
    return 0
}

cmd_status() {
    local state name rc=0
    if ! command -v sinfo >/dev/null; then
        echo "SLURM is not installed"
        return 1
    fi
    # The controller's view of the node lags (up to SlurmdTimeout) behind a
    # crashed daemon, so check the local processes too.
    for name in munged slurmctld slurmd; do
        case $name in
            munged) running munged "$MUNGE_PID" ;;
            slurmctld) running slurmctld "$SLURMCTLD_PID" ;;
            slurmd) running slurmd "$SLURMD_PID" ;;
        esac || { echo "$name is not running"; rc=1; }
    done
    if ! timeout 10 sinfo; then
        echo "slurmctld does not answer"
        return 1
    fi
    state=$(node_state)
    if ! usable_state "$state"; then
        echo "node $HOST is not usable (state: '${state:-unknown}')"
        rc=1
    fi
    return $rc
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
