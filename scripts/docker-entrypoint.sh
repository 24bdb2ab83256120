#!/bin/sh
# The container's entrypoint (Dockerfile): checks the one thing a container gets wrong most,
# a data folder the container's user cannot write (a bind-mounted host folder keeps its host
# owner; only a named volume gets the image's /data owner), says how to fix it, then runs
# `callbot "$@"`.
set -eu
data=${CALLBOT_BOT_DATA_DIR:-/data}

case "${1:-}" in
  check-config | -h | --help | --version) exec callbot "$@" ;;  # they write nothing
esac

if [ -d "$data" ] && [ -w "$data" ] && [ -x "$data" ]; then
  exec callbot "$@"
fi

uid=$(id -u)
gid=$(id -g)
if [ -d "$data" ]; then
  what="belongs to uid $(stat -c %u "$data") with mode $(stat -c %a "$data")"
else
  what="does not exist (and its parent is not writable by this user)"
fi
cat >&2 <<EOF
callbot: the data folder $data is not writable by this container's user (uid $uid, gid $gid):
it $what.
A host folder mounted there (-v /host/folder:$data) keeps its owner on the host. Either
  - run the container as that folder's owner: docker run --user "\$(id -u):\$(id -g)" ...
    (docker compose: user: "1000:1000", the folder owner's uid:gid), or
  - give the folder to the image's user once: sudo chown -R $uid:$gid /host/folder
A named volume (-v callbot-data:$data) needs neither: it gets the image's owner.
EOF
exit 2
