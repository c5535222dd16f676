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
# Drift in windows of 10 s against the previous minute (production: a minute against the previous
# day), so that the drift the simulator injects after 150 s shows on the page within the run; the
# amount features only (with the score): a fresh run's counts and sums grow all through it (README).
export DRIFT_WINDOW_S="${DRIFT_WINDOW_S:-10}" DRIFT_REFERENCE_S="${DRIFT_REFERENCE_S:-60}"
export DRIFT_FEATURES="${DRIFT_FEATURES:-current_amount,avg_amount_1h,avg_amount_24h,amount_zscore_24h}"
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
                 labels.fraud-feedback (the simulator's labels, 20 s late), transactions-dlq (dead letters),
                 monitoring.feature-drift, monitoring.pred-drift (drift and online model quality)
  the fraud loop on the page: model quality as labels arrive; from 150 s, amounts x5 for half
  of the users: drift alerts on the amount features
MSG
"$bin/faust" -A app simulate --duration 240 --drift-at 150 --drift-segment 0.5 --drift-factor 5 --label-delay 20 "$@"
echo "demo: traffic done; latest features of heavy-00:"
curl -fsS "http://localhost:$port/features/heavy-00"; echo
echo "demo: the fraud loop (from /stats):"
stats=$(curl -fsS "http://localhost:$port/stats")
"$bin/python" - "$stats" <<'PY'
import json, sys
c = json.loads(sys.argv[1])["cluster"]
for version, q in c["model_quality"].items():
    print(f"  model {version}: {q['labelled']} labelled ({q['positives']} fraud), "
          f"precision {q['precision']}, recall {q['recall']}, AUC {q['auc']}")
print(f"  labels {c['labels']}; drift alerts since start: {c['drift_warnings_total']}")
for name, r in c["drift"].items():
    psi = "no reference" if r["psi"] is None else f"{r['psi']:.3f}"
    print(f"  {name:<40} PSI {psi:>12}  alerts {r['warnings_total']}")
PY
