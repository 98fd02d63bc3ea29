#!/bin/sh
# The official redis entrypoint's part the compose file relies on: redis-server as user redis,
# without protected mode (other containers connect over the compose network).
set -eu
if [ "${1:-}" = redis-server ]; then
    shift
    chown redis:redis /data
    exec setpriv --reuid=redis --regid=redis --init-groups redis-server --protected-mode no "$@"
fi
exec "$@"
