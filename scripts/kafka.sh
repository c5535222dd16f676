#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, combined broker+controller) for
# development and CI. No Docker: the jars come from Maven Central through
# `mvn dependency:copy-dependencies` (scripts/pom.xml) and are cached outside
# the repository.
#
#   scripts/kafka.sh start|stop|status|logs|reset
#
# Environment:
#   KAFKA_PORT             client port (default 9092); the controller uses KAFKA_PORT+1
#   VELOCITY_CACHE         cache root (default ~/.cache/velocity)
#   KAFKA_DATA_DIR         broker data + pid + logs (default $VELOCITY_CACHE/kafka-$KAFKA_PORT)
#   KAFKA_HEAP_OPTS        JVM heap (default -Xms256m -Xmx768m, fit for a 2-core box)
#   KAFKA_START_TIMEOUT_S  how long `start` waits for the broker (default 120)
#   KAFKA_HOST             host the client and controller listeners bind (default localhost)
#   KAFKA_ADVERTISED_HOST  host advertised to clients (default KAFKA_HOST); must be an
#                          address clients can reach, e.g. not 0.0.0.0
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kafka_version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
port="${KAFKA_PORT:-9092}"
controller_port="$((port + 1))"
host="${KAFKA_HOST:-localhost}"
advertised_host="${KAFKA_ADVERTISED_HOST:-$host}"
# where `start` checks that the port answers: the loopback address for localhost
probe_host="$host"
if [[ "$host" == localhost ]]; then probe_host=127.0.0.1; fi
cache="${VELOCITY_CACHE:-$HOME/.cache/velocity}"
libs="$cache/kafka-$kafka_version/libs"
data="${KAFKA_DATA_DIR:-$cache/kafka-$port}"
pid_file="$data/kafka.pid"
log_file="$data/logs/server.log"
heap="${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}"
timeout_s="${KAFKA_START_TIMEOUT_S:-120}"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }

fetch_jars() {
  if [[ -f "$libs/.complete" ]]; then return; fi
  command -v mvn >/dev/null || { log "mvn not found (apt-get install maven)"; exit 1; }
  log "fetching Apache Kafka $kafka_version jars with Maven into $libs"
  rm -rf "$libs" && mkdir -p "$libs"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$libs"
  touch "$libs/.complete"
}

java_run() {
  local run=()
  [[ -n "${exec_java:-}" ]] && run=(exec)
  # shellcheck disable=SC2086
  "${run[@]}" java $heap -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$data/log4j.properties" \
    -Dkafka.logs.dir="$data/logs" -cp "$libs/*" "$@"
}

running_pid() {
  [[ -f "$pid_file" ]] || return 1
  local pid
  pid="$(cat "$pid_file")"
  if kill -0 "$pid" 2>/dev/null; then echo "$pid"; return 0; fi
  return 1
}

port_open() { (exec 3<>"/dev/tcp/$probe_host/$port") 2>/dev/null; }

write_config() {
  mkdir -p "$data/logs" "$data/log-dirs"
  cat >"$data/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$host:$controller_port
listeners=PLAINTEXT://$host:$port,CONTROLLER://$host:$controller_port
advertised.listeners=PLAINTEXT://$advertised_host:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$data/log-dirs
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
num.network.threads=2
num.io.threads=4
log.retention.hours=168
EOF
  cat >"$data/log4j.properties" <<EOF
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=$log_file
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
EOF
}

start() {
  if pid="$(running_pid)"; then
    log "already running (pid $pid) on $host:$port"
    return 0
  fi
  if port_open; then
    log "port $port is taken by another process; set KAFKA_PORT"
    exit 1
  fi
  command -v java >/dev/null || { log "java not found (apt-get install default-jre-headless)"; exit 1; }
  fetch_jars
  write_config
  if [[ ! -f "$data/log-dirs/meta.properties" ]]; then
    local cluster_id
    cluster_id="$(java_run kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    java_run kafka.tools.StorageTool format -t "$cluster_id" -c "$data/server.properties" >/dev/null
  fi
  : >"$log_file"
  # exec in the background subshell, so that $! is the JVM itself
  (exec_java=1 java_run kafka.Kafka "$data/server.properties") >"$data/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$pid_file"
  local deadline=$((SECONDS + timeout_s))
  until grep -q "Kafka Server started" "$log_file" 2>/dev/null && port_open; do
    if ! running_pid >/dev/null; then
      log "broker exited during start; last lines of $data/logs:"
      tail -n 20 "$data/logs/stdout.log" "$log_file" >&2 || true
      exit 1
    fi
    if ((SECONDS > deadline)); then
      log "broker did not answer within ${timeout_s}s"
      exit 1
    fi
    sleep 0.5
  done
  log "started (pid $(cat "$pid_file")) on $host:$port, data in $data"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    log "not running"
    rm -f "$pid_file"
    return 0
  fi
  kill -TERM "$pid"
  local deadline=$((SECONDS + 60))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS > deadline)); then
      log "broker did not stop within 60s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$pid_file"
  log "stopped (pid $pid)"
}

status() {
  if pid="$(running_pid)"; then
    log "running (pid $pid) on $host:$port, data in $data"
  else
    log "not running"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  logs) tail -n "${2:-100}" "$log_file" ;;
  reset) stop; rm -rf "$data"; log "removed $data" ;;
  *) echo "usage: $0 start|stop|status|logs [N]|reset" >&2; exit 2 ;;
esac
