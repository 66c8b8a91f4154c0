#!/usr/bin/env bash
# Submit a datamodels job to a running Ray cluster through Ray Jobs (`datamodels submit`).
#   cluster/submit.sh ADDRESS CONFIG RUN_URI [datamodels submit options...]
# e.g. cluster/submit.sh http://127.0.0.1:8265 configs/cifar10.yaml s3://bucket/runs/cifar10
# RUN_URI must be reachable from every node: an object-store URI, or an absolute path on a
# shared filesystem with --shared-fs. ADDRESS is the Jobs API, bound to the head's loopback by
# ray-cluster.yaml: open a tunnel first (`ray dashboard cluster/ray-cluster.yaml` or
# `ssh -L 8265:localhost:8265 HEAD`) and pass http://127.0.0.1:8265. Where the cluster runs
# with Ray token authentication, export RAY_AUTH_TOKEN (the cluster's token) first.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 RAY_DASHBOARD_ADDRESS CONFIG RUN_URI [--set key=value ...] [--no-wait]" >&2
  exit 2
fi
address=$1 config=$2 run=$3
case "$address" in
  http://127.0.0.1:*|http://localhost:*|https://*) ;;
  *) echo "refusing $address: reach the Jobs API over an SSH tunnel (http://127.0.0.1:8265) or https" >&2
     exit 2 ;;
esac
shift 3
exec datamodels submit "$config" --address "$address" --out "$run" "$@"
