#!/bin/sh
# PID 1 of the User-Mode Linux lab guest (see lab/uml.py).
#
# The guest boots with the host's filesystem as its root (hostfs), so this
# script is read straight from the checkout.  Kernel command-line words of the
# form KEY=VALUE that the kernel does not know reach us as environment
# variables; we use:
#   WB_JOB               path of the job script (run with sh); required
#   WB_MAX_EQUALIZERS    max_equalizers for sch_teql (default 2)
#   WB_KEEP              the checkout: kept visible even under /tmp or /run
#   WB_MODULES_DIR       the running kernel's modules directory
#
# Contract with the host: the job's exit status is written to
# "$(dirname "$WB_JOB")/rc" and the guest powers off.  Whatever fails here, we
# still try to write a (nonzero) rc and power off; PID 1 never waits for input
# and never hangs on purpose.  The host side also has a timeout.

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
HOME=/root
export HOME
LANG=C.UTF-8
export LANG
umask 022

rc=125
rcfile=""
if [ -n "$WB_JOB" ]; then
    rcfile="$(dirname "$WB_JOB")/rc"
fi

log() {
    echo "lab-init: $*"
}

finish() {
    # Write rc (if we know where), flush hostfs, power off.  Never returns.
    if [ -n "$rcfile" ]; then
        echo "$rc" >"$rcfile" 2>/dev/null || log "cannot write $rcfile"
    fi
    sync
    poweroff -f
    # poweroff should not return; if it does, fall back to the kernel.
    echo o >/proc/sysrq-trigger 2>/dev/null
    halt -f
    # Last resort: exiting PID 1 panics the kernel, which ends UML too.
    exit "$rc"
}

trap 'rc=124; log "signal received"; finish' INT TERM HUP

mount -t proc proc /proc 2>/dev/null || log "mount proc failed"
mount -t sysfs sysfs /sys 2>/dev/null || log "mount sysfs failed"
# A checkout under /tmp or /run (CI may clone there) would vanish under the
# tmpfs mounts: hold it on devtmpfs (auto-mounted by UML) and bind it back.
hold=""
case "$WB_KEEP" in
    /tmp/*|/run/*)
        mkdir -p /dev/.wb-keep && mount --bind "$WB_KEEP" /dev/.wb-keep && hold=/dev/.wb-keep \
            || log "cannot hold $WB_KEEP"
        ;;
esac
mount -t tmpfs -o mode=0755 tmpfs /run 2>/dev/null || log "mount /run failed"
mount -t tmpfs -o mode=1777 tmpfs /tmp 2>/dev/null || log "mount /tmp failed"
if [ -n "$hold" ]; then
    mkdir -p "$WB_KEEP" && mount --bind "$hold" "$WB_KEEP" || log "cannot bind $WB_KEEP back"
fi
# devtmpfs is auto-mounted on /dev by the UML kernel; add shm and pts.
mkdir -p /dev/shm /dev/pts 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /dev/shm 2>/dev/null
mount -t devpts devpts /dev/pts 2>/dev/null
if [ -d /sys/fs/cgroup ] && grep -qw cgroup2 /proc/filesystems 2>/dev/null; then
    mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
fi
hostname lab 2>/dev/null

ip link set lo up 2>/dev/null || log "lo up failed"

# Modules of the running UML kernel: the host side (lab/kernel.py) names
# their directory on the kernel command line, WB_MODULES_DIR (the packaged
# kernel's are in /usr/lib/uml/modules/<release>, outside /lib/modules so
# they do not clash with the host's; a fetched kernel's under .lab/kernels).
# Never another release's: they would not load.  Paths in modules.dep are
# relative to this directory ("kernel/net/sched/sch_teql.ko: deps...").
kver="$(uname -r)"
mroot="${WB_MODULES_DIR:-/usr/lib/uml/modules/$kver}"
[ -f "$mroot/modules.dep" ] || log "no modules.dep in $mroot (kernel $kver)"
WB_MODULES_DIR="$mroot"
export WB_MODULES_DIR

modok=1
insmod_one() {
    # insmod_one RELPATH [PARAMS...]; an already-loaded module is fine
    # (sysfs names use "_" where file names have "-").
    name="$(basename "$1" .ko | tr - _)"
    [ -d "/sys/module/$name" ] && return 0
    rel="$1"
    shift
    insmod "$mroot/$rel" "$@"
}
load() {
    # load RELPATH [PARAMS...]: dependencies first, like modprobe (which loads
    # the modules.dep list from its end), then the module itself.
    deps="$(sed -n "s|^$1: *||p" "$mroot/modules.dep" 2>/dev/null)"
    rev=""
    for d in $deps; do rev="$d $rev"; done
    for d in $rev; do
        insmod_one "$d" || { log "insmod $d (for $1) failed"; modok=0; }
    done
    insmod_one "$@" || { log "insmod $* failed"; modok=0; }
}

load kernel/net/sched/sch_teql.ko "max_equalizers=${WB_MAX_EQUALIZERS:-2}"
load kernel/drivers/net/veth.ko
load kernel/net/sched/sch_netem.ko
# The lab's router B puts each line's far end in its own VRF (lab/topo.py);
# vrf needs ipv6, which is a module in this kernel.
load kernel/drivers/net/vrf.ko

if [ -z "$WB_JOB" ]; then
    log "WB_JOB not set"
    rc=125
elif [ ! -r "$WB_JOB" ]; then
    log "job script $WB_JOB not readable"
    rc=125
elif [ "$modok" != 1 ]; then
    log "module loading failed, not running the job"
    rc=125
else
    # Run the job in the background and wait, so that the trap above can
    # still fire; its stdin is /dev/null so it can never block on the console.
    sh "$WB_JOB" </dev/null &
    wait $!
    rc=$?
fi

finish
