#!/usr/bin/env bash
# Submit a datamodels job to a running Ray cluster through Ray Jobs.
#   cluster/submit.sh ADDRESS CONFIG RUN_URI [extra datamodels args...]
# e.g. cluster/submit.sh http://head:8265 configs/cifar10.yaml s3://bucket/runs/cifar10
# RUN_URI must be reachable from every node (shared filesystem or object store URI).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 RAY_DASHBOARD_ADDRESS CONFIG RUN_URI [--set key=value ...]" >&2
  exit 2
fi
address=$1 config=$2 run=$3
shift 3
exec ray job submit --address "$address" --working-dir . \
  -- datamodels run "$config" --out "$run" --quiet "$@"
