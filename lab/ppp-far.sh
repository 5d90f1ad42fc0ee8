#!/bin/sh
# Router B's end of lab line $1 (lab/ppp.py): runs in netns "rb" and starts
# the far pppd, with the options in $RUN/wan$1p.opts (read at each dial, so
# a redial may change them) and any further arguments.
#   PPP:    the near pppd's `pty` command; stdin/stdout are the line.
#   PPPoE:  pppoe-server's `-q` program (through a per-line stub); the
#           arguments are the session's (pty "pppoe ...", addresses).
# It waits while $RUN/wan$1.hold exists (a line that does not answer), then
# puts the far interface wan$1p, once pppd has created it, in vrf$1 and,
# once IPCP has brought it up, routes 10.0.0.0/31 back over it (the VRF
# layout of lab/topo.py).  It exits when that pppd does.
RUN=/run/lab-ppp
i=$1
shift
far="wan${i}p"
# Keep the line on fds 3 and 4 for pppd only: nothing of ours may reach it.
exec 3<&0 4>&1 </dev/null >/dev/null 2>>"$RUN/$far.wrap.log"
while [ -e "$RUN/wan$i.hold" ]; do sleep 0.05; done
# shellcheck disable=SC2046 # the options file holds words
pppd $(cat "$RUN/$far.opts") "$@" <&3 >&4 3<&- 4>&- &
pid=$!
echo "$pid" >"$RUN/$far.pid"
exec 3<&- 4>&-
until ip link set "$far" master "vrf$i" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || exit 0
    sleep 0.02
done
until ip route replace 10.0.0.0/31 dev "$far" table $((100 + i)) 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || exit 0
    sleep 0.02
done
wait "$pid"
