#!/usr/bin/env bash
# lungcad on a Ray cluster: start a head, then workers, then run the batch from the head.
#
#   on the head:       examples/ray/cluster.sh head
#   on each worker:    examples/ray/cluster.sh worker HEAD_IP:6379
#   on the head:       examples/ray/cluster.sh detect            # lungcad detect --engine ray --ray-address auto
#   at the end:        examples/ray/cluster.sh stop              # on every node
#
# Every node needs the same lungcad installed (pip install 'lungcad[ray]', or the image built with
# EXTRAS=gpu,ray) and the scans at the same path: any node reads a scan and computes its lung mask,
# and the actors with the networks run where the GPUs are.  Only the driver writes the outputs.
# Weight files of your own (--pipeline) are read on the driver and travel with the job.  When the
# cluster uses Ray's token authentication, every node and the driver need the same token
# (RAY_AUTH_MODE=token and RAY_AUTH_TOKEN, or ~/.ray/auth_token).  run.json's engine.nodes says
# which node read how many scans and ran the networks on how many.
set -euo pipefail

port=${RAY_PORT:-6379}
input=${LUNGCAD_INPUT:-/data/scans}
output=${LUNGCAD_OUTPUT:-/data/out}

case "${1:-}" in
    head)      # the head also runs tasks; --num-gpus is found by Ray (CUDA_VISIBLE_DEVICES)
        exec ray start --head --port "$port" --include-dashboard false --disable-usage-stats ;;
    worker)
        exec ray start --address "${2:?give the address of the head, HOST:PORT}" --disable-usage-stats ;;
    detect)    # ACTORS actors with the networks, GPUS_PER_ACTOR GPUs each (0: on CPU)
        shift
        exec lungcad detect "$input" -o "$output" --engine ray --ray-address auto \
            --ray-actors "${ACTORS:-4}" --ray-gpus-per-actor "${GPUS_PER_ACTOR:-1}" --no-progress "$@" ;;
    stop)
        exec ray stop ;;
    *)
        echo "usage: $0 head | worker HEAD:PORT | detect [lungcad detect flags] | stop" >&2
        exit 2 ;;
esac
