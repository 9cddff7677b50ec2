#!/usr/bin/env bash
# A one-node Slurm on this machine for the tests: munged, slurmctld and slurmd from Debian's
# packages (slurm-wlm, munge), configured in DIR, which also holds their state and logs.
#   tests/slurm/start.sh DIR        start; prints SLURM_CONF=DIR/slurm.conf
#   tests/slurm/start.sh DIR stop   cancel its jobs and stop what DIR's start started
# No cgroups (proctrack/linuxproc, task/none); JobRequeue=1; no accounting (sacct fails, as
# on a cluster without slurmdbd).
set -euo pipefail
dir=$(realpath -m "$1"); mode=${2:-start}
if [ "$mode" = stop ]; then  # its jobs first (their slurmstepd end with them), then daemons
    export SLURM_CONF="$dir/slurm.conf"
    scancel --full --user "$(id -un)" 2>/dev/null || true
    for _ in $(seq 40); do
        [ -z "$(squeue -h 2>/dev/null)" ] && break
        sleep 0.25
    done
    pkill -f -- "-f $dir/slurm.conf" || true
    pkill -f -- "--socket=$dir/munge/munge.socket" || true
    exit 0
fi
for tool in munged slurmctld slurmd sbatch; do
    command -v "$tool" >/dev/null || { echo "no $tool: apt-get install -y slurm-wlm munge" >&2; exit 3; }
done
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
node=$(hostname -s)
cpus=$(nproc)
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))
cat > "$dir/slurm.conf" <<CONF
ClusterName=wrntest
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobRequeue=1
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmctldPort=$((6817 + RANDOM % 1000 * 2))
SlurmdPort=$((7817 + RANDOM % 1000 * 2))
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MinJobAge=600
KillWait=30
InactiveLimit=0
Waittime=0
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
NodeName=$node CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
socket="$dir/munge/munge.socket"
munged --force --socket="$socket" --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" \
    --seed-file="$dir/munge/seed"
export SLURM_CONF="$dir/slurm.conf"
# slurm's daemons find munge's socket from the config's AuthInfo
sed -i "1i AuthInfo=socket=$socket" "$dir/slurm.conf"
slurmctld -f "$dir/slurm.conf"
slurmd -f "$dir/slurm.conf"
for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "SLURM_CONF=$dir/slurm.conf"
        exit 0
    fi
    sleep 0.5
done
echo "slurm did not come up; see $dir/*.log" >&2
exit 1
