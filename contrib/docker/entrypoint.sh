#!/bin/sh
# Writes a config on the first start (as upstream's image does), then runs the peer.
# Everything else comes from CLUSTER_* variables at each start.
set -e
if [ ! -f "$IPFS_CLUSTER_PATH/service.json" ]; then
    ipfs-cluster-service init
fi
exec ipfs-cluster-service "$@"
