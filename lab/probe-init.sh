#!/bin/sh
# PID 1 of the lab's boot check (lab/kernel.py): a kernel that gets here runs
# userspace processes on this host, which is what Debian's UML 6.1 and 6.12
# cannot do on AVX-512/AMX CPUs (they panic when init first runs).
echo "@@wanbalanced-lab: init reached@@"
# Never power off anything but the guest this script is the init of.
[ "$$" = 1 ] || exit 0
exec /sbin/poweroff -f
