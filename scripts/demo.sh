#!/usr/bin/env bash
# The main job on one machine: a worker in the background, simulated traffic in
# the foreground, and the URLs to look at. Ctrl-C stops traffic and the worker
# (the local Kafka keeps running; `scripts/kafka.sh stop` stops it).
#
#   scripts/demo.sh [simulate options, e.g. --rate 500 --duration 300]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
port="${WEB_PORT:-6066}"
export BROKER_URL="${BROKER_URL:-kafka://localhost:${KAFKA_PORT:-9092}}"
mkdir -p data
log=data/demo-worker.log

"$bin/faust" -A app worker -l info >"$log" 2>&1 &
worker=$!
cleanup() {
  if kill -0 "$worker" 2>/dev/null; then
    echo "demo: stopping worker (pid $worker)"
    kill -TERM "$worker"
    wait "$worker" 2>/dev/null || true
  fi
}
trap cleanup EXIT INT TERM

echo "demo: worker pid $worker, log in $log; waiting for it to be ready..."
for _ in $(seq 1 240); do
  if curl -fsS "http://localhost:$port/ready" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$worker" 2>/dev/null; then echo "demo: worker exited:"; tail -n 30 "$log"; exit 1; fi
  sleep 0.5
done
curl -fsS "http://localhost:$port/ready" >/dev/null || { echo "demo: worker not ready after 120s"; exit 1; }

cat <<MSG
demo: worker ready. Look at:
  http://localhost:$port/                        the live page: throughput, lag, freshness, dead letters, lookups
  http://localhost:$port/metrics  /stats          Prometheus metrics, JSON stats
  http://localhost:$port/features/heavy-00        features of a heavy user (try user-000001, ...)
  http://localhost:$port/features/heavy-00?at=\$(date +%s)   the same "as of now"
  http://localhost:$port/ready  /health
  output topics: ml-features (features), predictions.fraud (a fraud score per record),
                 labels.fraud-feedback (the simulator's fraud labels), transactions-dlq (dead letters)
MSG
"$bin/faust" -A app simulate --duration 120 "$@"
echo "demo: traffic done; latest features of heavy-00:"
curl -fsS "http://localhost:$port/features/heavy-00"; echo
