#!/usr/bin/env bash
# Run a command inside a private network namespace: scripts/netns-run.sh CMD [ARGS...]
#
# libwebrtc (inside the livekit SDK) ignores loopback interfaces when it gathers ICE
# candidates, so media tests need a real interface. This makes a fresh namespace with only
# "lo" and a veth pair whose ends carry 10.213.0.1 and 10.213.0.2: every packet of the test
# stays on addresses the test made itself, and nothing inside can reach any other network.
# Needs root (or CAP_SYS_ADMIN). The addresses are passed on as CALLBOT_NETNS_ADDRS.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "netns-run.sh: needs root to create a network namespace" >&2
  exit 1
fi
exec unshare --net -- bash -c '
  set -e
  ip link set lo up
  ip link add cbv0 type veth peer name cbv1
  ip addr add 10.213.0.1/24 dev cbv0
  ip addr add 10.213.0.2/24 dev cbv1
  ip link set cbv0 up
  ip link set cbv1 up
  export CALLBOT_NETNS_ADDRS=10.213.0.1,10.213.0.2
  exec "$@"' netns-run "$@"
