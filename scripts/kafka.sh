#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, combined broker+controller) for
# development and CI. No Docker: the jars come from Maven Central through
# `mvn dependency:copy-dependencies` (scripts/pom.xml) and are cached outside
# the repository.
#
#   scripts/kafka.sh start|stop|status|tls-env|logs|reset
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
#   KAFKA_SASL_SSL_PORT    unset (default): PLAINTEXT only. Set (e.g. KAFKA_PORT+2; not
#                          KAFKA_PORT+1, the controller's): `start` adds a SASL_SSL listener
#                          there (TLS + SCRAM-SHA-256/SCRAM-SHA-512/PLAIN, user "velocity";
#                          client certificates requested, not required) next to the unchanged
#                          PLAINTEXT one, which stays the inter-broker and controller listener.
#
# With KAFKA_SASL_SSL_PORT, the first `start` makes, under $KAFKA_DATA_DIR/tls/ (kept across
# restarts; `reset` deletes them with the data), with openssl:
#   ca.pem, ca.key                  a throwaway CA; clients trust ca.pem
#   broker.pem, broker.key          the broker's certificate, signed by the CA, for localhost,
#                                   127.0.0.1, ::1, KAFKA_HOST and KAFKA_ADVERTISED_HOST
#                                   (broker-keystore.pem: key + chain, what the broker reads)
#   client.pem, client.key          a client certificate signed by the CA (mutual TLS)
#   untrusted-ca.pem, untrusted-ca.key  another CA, which signed nothing the broker shows
#   velocity.password               the password of user "velocity" (mode 600, made once)
#   client-sasl-ssl.properties      a Java client's settings (SASL_SSL, SCRAM-SHA-512)
#   env                             KEY=value lines for clients (also `kafka.sh tls-env`):
#     KAFKA_SASL_SSL_BOOTSTRAP, KAFKA_SSL_CAFILE, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD_FILE,
#     KAFKA_SASL_MECHANISMS, KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE, KAFKA_UNTRUSTED_CAFILE,
#     KAFKA_SASL_SSL_CLIENT_PROPERTIES
# The SCRAM credentials of "velocity" are written at format time (a new data directory) or
# else through the PLAINTEXT listener once the broker is up; `start` succeeds only when a
# client has authenticated over SASL_SSL with them.
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
sasl_port="${KAFKA_SASL_SSL_PORT:-}"
tls="$data/tls"
sasl_user=velocity
password_file="$tls/$sasl_user.password"
client_properties="$tls/client-sasl-ssl.properties"
env_file="$tls/env"

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

port_open() { (exec 3<>"/dev/tcp/$probe_host/${1:-$port}") 2>/dev/null; }

# A Kafka command-line tool (ConfigCommand, ...): a small JVM, logging warnings to stderr.
tool_run() {
  java -Xms32m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$data/tools-log4j.properties" -cp "$libs/*" "$@"
}

# Runs a command with its output shown only when it fails (openssl's progress dots).
quiet() {
  local out
  if ! out="$("$@" 2>&1)"; then
    printf '%s\n' "$out" >&2
    return 1
  fi
}

# Whether the certificate exists and is valid for at least another day.
cert_valid() { [[ -s "$1" ]] && openssl x509 -noout -checkend 86400 -in "$1" >/dev/null 2>&1; }

# The broker certificate's subjectAltName: loopback names and the hosts the broker answers on.
broker_san() {
  local names=(localhost 127.0.0.1 ::1 "$host" "$advertised_host") seen=" " n san=""
  for n in "${names[@]}"; do
    [[ -z "$n" || "$n" == 0.0.0.0 || "$n" == "::" || "$seen" == *" $n "* ]] && continue
    seen+="$n "
    if [[ "$n" =~ ^[0-9.]+$ || "$n" == *:* ]]; then san+=",IP:$n"; else san+=",DNS:$n"; fi
  done
  printf '%s' "${san#,}"
}

# The throwaway CAs, certificates and password under $tls (made once, remade only when a
# certificate is missing or about to expire, or the broker's names changed).
make_tls() (
  umask 077
  mkdir -p "$tls"
  local san cnf="$tls/openssl.cnf"
  san="$(broker_san)"
  cat >"$cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = velocity
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[broker]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
  ca() { # name, common name
    quiet openssl req -x509 -new -config "$cnf" -extensions ca -newkey rsa:2048 -nodes -sha256 \
      -days 3650 -subj "/CN=$2" -keyout "$tls/$1.key" -out "$tls/$1.pem"
  }
  leaf() { # name, common name, extensions section
    quiet openssl req -new -config "$cnf" -newkey rsa:2048 -nodes -subj "/CN=$2" \
      -keyout "$tls/$1.key" -out "$tls/$1.csr"
    quiet openssl x509 -req -in "$tls/$1.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -sha256 -days 825 \
      -extfile "$cnf" -extensions "$3" -out "$tls/$1.pem"
    rm -f "$tls/$1.csr"
  }
  local made=()
  if ! cert_valid "$tls/ca.pem" || [[ ! -s "$tls/ca.key" ]]; then
    ca ca "Velocity throwaway test CA"
    rm -f "$tls/broker.pem" "$tls/client.pem"
    made+=(ca.pem)
  fi
  if ! cert_valid "$tls/untrusted-ca.pem"; then
    ca untrusted-ca "Velocity untrusted test CA (signed nothing)"
    made+=(untrusted-ca.pem)
  fi
  if ! cert_valid "$tls/broker.pem" || [[ "$(cat "$tls/broker.san" 2>/dev/null)" != "$san" ]]; then
    leaf broker "$advertised_host" broker
    printf '%s\n' "$san" >"$tls/broker.san"
    cat "$tls/broker.key" "$tls/broker.pem" "$tls/ca.pem" >"$tls/broker-keystore.pem"
    made+=("broker.pem ($san)")
  fi
  if ! cert_valid "$tls/client.pem"; then
    leaf client "$sasl_user" client
    made+=(client.pem)
  fi
  chmod 644 "$tls/ca.pem" "$tls/untrusted-ca.pem" "$tls/broker.pem" "$tls/client.pem"
  if [[ ! -s "$password_file" ]]; then
    openssl rand -hex 24 >"$password_file"
    made+=("$sasl_user.password")
  fi
  chmod 600 "$password_file"
  if ((${#made[@]})); then log "made in $tls: ${made[*]}"; fi
)

# The Java client settings for SASL_SSL with SCRAM-SHA-512 (also what `start` checks with).
write_client_properties() (
  umask 077
  cat >"$client_properties" <<EOF
# A Kafka Java client of the local broker's SASL_SSL listener (--command-config / -consumer.config).
# bootstrap.servers=$advertised_host:$sasl_port
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$sasl_user" password="$(cat "$password_file")";
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
EOF
)

write_env() {
  local tmp="$env_file.tmp"
  cat >"$tmp" <<EOF
KAFKA_SASL_SSL_BOOTSTRAP=$advertised_host:$sasl_port
KAFKA_SSL_CAFILE=$tls/ca.pem
KAFKA_SASL_USERNAME=$sasl_user
KAFKA_SASL_PASSWORD_FILE=$password_file
KAFKA_SASL_MECHANISMS=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN
KAFKA_SSL_CERTFILE=$tls/client.pem
KAFKA_SSL_KEYFILE=$tls/client.key
KAFKA_UNTRUSTED_CAFILE=$tls/untrusted-ca.pem
KAFKA_SASL_SSL_CLIENT_PROPERTIES=$client_properties
EOF
  mv "$tmp" "$env_file"
}

# The SASL_SSL listener of the running broker, if its configuration has one (host:port).
running_sasl_listener() {
  sed -n 's/^listeners=.*SASL_SSL:\/\/\([^,]*\).*/\1/p' "$data/server.properties" 2>/dev/null | grep .
}

# Whether a SCRAM-SHA-512 client authenticates over SASL_SSL and sees both SCRAM credentials
# of the user (what the tool said is printed).
scram_check() {
  local out status=0
  out="$(tool_run kafka.admin.ConfigCommand --bootstrap-server "$advertised_host:$sasl_port" \
    --command-config "$client_properties" --describe --entity-type users --entity-name "$sasl_user" 2>&1)" ||
    status=$?
  printf '%s\n' "$out"
  ((status == 0)) && [[ "$out" == *SCRAM-SHA-256=* && "$out" == *SCRAM-SHA-512=* ]]
}

# Until scram_check passes: if it does not at first (a data directory formatted without the
# SASL_SSL listener, or another password), the credentials are written through the PLAINTEXT
# listener, one mechanism a request (KRaft refuses a user twice in one request).
ensure_scram() {
  local deadline=$((SECONDS + timeout_s)) out password mechanism altered=""
  password="$(cat "$password_file")"
  until out="$(scram_check)"; do
    if ((SECONDS > deadline)); then
      log "no SASL_SSL client could authenticate as $sasl_user on $advertised_host:$sasl_port within ${timeout_s}s:"
      printf '%s\n' "$out" | tail -n 20 >&2
      return 1
    fi
    if [[ -z "$altered" ]]; then
      log "writing the SCRAM credentials of $sasl_user through $advertised_host:$port"
      for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
        quiet tool_run kafka.admin.ConfigCommand --bootstrap-server "$advertised_host:$port" --alter \
          --add-config "$mechanism=[password=$password]" --entity-type users --entity-name "$sasl_user" ||
          { log "could not write the $mechanism credential of $sasl_user"; return 1; }
      done
      altered=1
    else
      sleep 1
    fi
  done
}

write_config() {
  mkdir -p "$data/logs" "$data/log-dirs"
  local listeners="PLAINTEXT://$host:$port,CONTROLLER://$host:$controller_port"
  local advertised="PLAINTEXT://$advertised_host:$port"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  if [[ -n "$sasl_port" ]]; then
    listeners+=",SASL_SSL://$host:$sasl_port"
    advertised+=",SASL_SSL://$advertised_host:$sasl_port"
    protocols+=",SASL_SSL:SASL_SSL"
  fi
  : >"$data/server.properties"
  # the PLAIN user list holds the password: the file is then the user's alone
  if [[ -n "$sasl_port" ]]; then chmod 600 "$data/server.properties"; fi
  cat >>"$data/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$host:$controller_port
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
listener.security.protocol.map=$protocols
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
  if [[ -n "$sasl_port" ]]; then
    cat >>"$data/server.properties" <<EOF
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$sasl_user="$(cat "$password_file")";
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$tls/broker-keystore.pem
listener.name.sasl_ssl.ssl.truststore.type=PEM
listener.name.sasl_ssl.ssl.truststore.location=$tls/ca.pem
listener.name.sasl_ssl.ssl.client.auth=requested
EOF
  fi
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
  cat >"$data/tools-log4j.properties" <<EOF
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
}

check_sasl_port() {
  [[ -z "$sasl_port" ]] && return 0
  if [[ ! "$sasl_port" =~ ^[0-9]+$ ]] || ((sasl_port < 1 || sasl_port > 65535)); then
    log "KAFKA_SASL_SSL_PORT=$sasl_port is not a port number"
    exit 2
  fi
  if ((sasl_port == port || sasl_port == controller_port)); then
    log "KAFKA_SASL_SSL_PORT=$sasl_port is the PLAINTEXT ($port) or the controller's ($controller_port) port"
    exit 2
  fi
}

start() {
  check_sasl_port
  if pid="$(running_pid)"; then
    local running
    running="$(running_sasl_listener)" || running=""
    if [[ -n "$sasl_port" && "$running" != "$host:$sasl_port" ]]; then
      local has="without a SASL_SSL listener"
      [[ -n "$running" ]] && has="with SASL_SSL on $running, not $host:$sasl_port"
      log "already running (pid $pid) on $host:$port $has: stop it first"
      exit 1
    fi
    if [[ -n "$sasl_port" && ! -f "$env_file" ]]; then
      # the last start did not get through its SASL_SSL check: try again
      ensure_scram || exit 1
      write_env
    fi
    log "already running (pid $pid) on $host:$port${running:+, SASL_SSL on $running}"
    return 0
  fi
  if port_open; then
    log "port $port is taken by another process; set KAFKA_PORT"
    exit 1
  fi
  if [[ -n "$sasl_port" ]] && port_open "$sasl_port"; then
    log "port $sasl_port is taken by another process; set KAFKA_SASL_SSL_PORT"
    exit 1
  fi
  command -v java >/dev/null || { log "java not found (apt-get install default-jre-headless)"; exit 1; }
  fetch_jars
  rm -f "$env_file"  # describes the listener of the last start, if it had one
  if [[ -n "$sasl_port" ]]; then
    command -v openssl >/dev/null || { log "openssl not found (apt-get install openssl)"; exit 1; }
    mkdir -p "$data"
    make_tls
    write_client_properties
  fi
  write_config
  if [[ ! -f "$data/log-dirs/meta.properties" ]]; then
    local cluster_id scram=()
    if [[ -n "$sasl_port" ]]; then
      local password
      password="$(cat "$password_file")"
      scram=(-S "SCRAM-SHA-256=[name=$sasl_user,password=$password]"
        -S "SCRAM-SHA-512=[name=$sasl_user,password=$password]")
    fi
    cluster_id="$(java_run kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    java_run kafka.tools.StorageTool format -t "$cluster_id" -c "$data/server.properties" "${scram[@]}" >/dev/null
  fi
  : >"$log_file"
  # exec in the background subshell, so that $! is the JVM itself
  (exec_java=1 java_run kafka.Kafka "$data/server.properties") >"$data/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$pid_file"
  local deadline=$((SECONDS + timeout_s))
  until grep -q "Kafka Server started" "$log_file" 2>/dev/null && port_open &&
    { [[ -z "$sasl_port" ]] || port_open "$sasl_port"; }; do
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
  if [[ -n "$sasl_port" ]]; then
    if ! ensure_scram; then
      log "the broker (pid $(cat "$pid_file")) is left running for a look; \`$0 stop\` stops it"
      exit 1
    fi
    write_env
    log "started (pid $(cat "$pid_file")) on $host:$port, SASL_SSL on $host:$sasl_port" \
      "(user $sasl_user authenticated), data in $data; client settings: $env_file"
    return 0
  fi
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
    local running
    if running="$(running_sasl_listener)"; then
      log "running (pid $pid) on $host:$port, SASL_SSL on $running, data in $data"
      if [[ -f "$env_file" ]]; then
        cat "$env_file"
      else
        log "no $env_file: the SASL_SSL check of the last start did not pass"
      fi
    else
      log "running (pid $pid) on $host:$port, data in $data"
    fi
  else
    log "not running"
    return 1
  fi
}

# What a client of the SASL_SSL listener needs, as KEY=value lines (the file $tls/env).
tls_env() {
  if [[ ! -f "$env_file" ]]; then
    log "no SASL_SSL listener: start with KAFKA_SASL_SSL_PORT set ($env_file is missing)"
    return 1
  fi
  running_pid >/dev/null || log "note: the broker is not running"
  cat "$env_file"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  tls-env) tls_env ;;
  logs) tail -n "${2:-100}" "$log_file" ;;
  reset) stop; rm -rf "$data"; log "removed $data" ;;
  *) echo "usage: $0 start|stop|status|tls-env|logs [N]|reset" >&2; exit 2 ;;
esac
