#!/usr/bin/env bash
# The local test cluster: Apache Kafka (single node, KRaft, broker+controller)
# and ZooKeeper on free loopback ports, data in a temporary directory.
#
#   scripts/cluster.sh up        start both (or report the running pair); stdout
#                                is exactly three lines for eval:
#                                  export IPSTATS_BROKERS=127.0.0.1:<port>
#                                  export IPSTATS_ZOOKEEPER=127.0.0.1:<port>
#                                  export IPSTATS_SASL_BROKERS=127.0.0.1:<port>
#                                the last is a SASL_PLAINTEXT listener (mechanism
#                                PLAIN, user ipstats, password ipstats-secret).
#                                Topics are not auto-created: `ipstats produce`
#                                creates its topic, or use kafka-topics --create.
#   scripts/cluster.sh down      stop both and remove their data
#   scripts/cluster.sh status    what runs, where
#   scripts/cluster.sh env       the three lines of a running cluster
#   scripts/cluster.sh pid kafka|zookeeper
#   scripts/cluster.sh start|stop kafka|zookeeper   restart one process (fault tests)
#   scripts/cluster.sh kafka-topics ARGS...           Kafka's own tools, from the same jars
#   scripts/cluster.sh kafka-consumer-groups ARGS...
#   scripts/cluster.sh kafka-delete-records ARGS...
#   scripts/cluster.sh kafka-get-offsets ARGS...
#   scripts/cluster.sh zkcli ARGS...                  ZooKeeper's zkCli.sh against the cluster
#
# It installs what is missing: ZooKeeper and kcat from Debian, the Kafka jars
# (pinned in scripts/kafka/pom.xml) from Maven Central into .cache/ (git-ignored).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KAFKA_VERSION=4.3.1
KAFKA_LIBS="$ROOT/.cache/kafka-$KAFKA_VERSION/libs"
STATE=${IPSTATS_CLUSTER_DIR:-${TMPDIR:-/tmp}/ipstats-cluster-$(id -u)}
ZK_BIN=/usr/share/zookeeper/bin
START_TIMEOUT=${IPSTATS_CLUSTER_START_TIMEOUT:-120}

log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} (apt)"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ ! -f /var/lib/apt/periodic/ipstats-updated ]; then
    $sudo apt-get update -qq >&2
    $sudo mkdir -p /var/lib/apt/periodic && $sudo touch /var/lib/apt/periodic/ipstats-updated
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

ensure_installed() {
  command -v java >/dev/null || die "java (17+) is required for Kafka"
  apt_install zookeeper kcat
  if [ ! -f "$KAFKA_LIBS/.complete" ]; then
    command -v mvn >/dev/null || apt_install maven
    log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIBS"
    rm -rf "$KAFKA_LIBS"
    mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
      -Dkafka.version="$KAFKA_VERSION" -DoutputDirectory="$KAFKA_LIBS" >&2
    touch "$KAFKA_LIBS/.complete"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Running, and not a zombie waiting to be reaped (after kill -9 the process
# may linger as one: it is dead all the same).
pid_alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state=$(sed -n 's/^[0-9]* (.*) \([A-Z]\).*/\1/p' "/proc/$1/stat" 2>/dev/null)
  [ "$state" != Z ]
}
alive() { [ -f "$STATE/$1.pid" ] && pid_alive "$(cat "$STATE/$1.pid")"; }

zk_answers() {
  local reply
  reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$(cat "$STATE/zookeeper.port")" && printf ruok >&3 && timeout 2 cat <&3) 2>/dev/null || true)
  [ "$reply" = imok ]
}

kafka_answers() {
  timeout 5 kcat -b "127.0.0.1:$(cat "$STATE/kafka.port")" -L -m 3 >/dev/null 2>&1
}

wait_until() {
  local what=$1 check=$2 pid_name=$3 deadline=$((SECONDS + START_TIMEOUT))
  until $check; do
    alive "$pid_name" || die "$what exited while starting; see $STATE/$pid_name.log"
    [ $SECONDS -lt $deadline ] || die "$what did not answer within ${START_TIMEOUT}s; see $STATE/$pid_name.log"
    sleep 0.2
  done
}

print_env() {
  echo "export IPSTATS_BROKERS=127.0.0.1:$(cat "$STATE/kafka.port")"
  echo "export IPSTATS_ZOOKEEPER=127.0.0.1:$(cat "$STATE/zookeeper.port")"
  echo "export IPSTATS_SASL_BROKERS=127.0.0.1:$(cat "$STATE/kafka-sasl.port")"
}

java_tool() {
  local main=$1
  shift
  # The cluster may have been started from another checkout: this one's jars
  # are fetched on first use all the same.
  [ -f "$KAFKA_LIBS/.complete" ] || ensure_installed
  java -Xmx256m -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2-tools.yaml" \
    -cp "$KAFKA_LIBS/*" "$main" "$@"
}

write_configs() {
  mkdir -p "$STATE/zookeeper-data" "$STATE/kafka-logs"
  cat >"$STATE/zoo.cfg" <<EOF
tickTime=500
dataDir=$STATE/zookeeper-data
clientPort=$(cat "$STATE/zookeeper.port")
clientPortAddress=127.0.0.1
maxClientCnxns=0
minSessionTimeout=1000
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,mntr
EOF
  local port cport sport
  port=$(cat "$STATE/kafka.port")
  cport=$(cat "$STATE/controller.port")
  sport=$(cat "$STATE/kafka-sasl.port")
  cat >"$STATE/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,SASL_PLAINTEXT://127.0.0.1:$sport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_PLAINTEXT://127.0.0.1:$sport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_ipstats="ipstats-secret";
log.dirs=$STATE/kafka-logs
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.segment.bytes=16777216
EOF
}

start_zookeeper() {
  alive zookeeper && return 0
  CLASSPATH="$ROOT/scripts/kafka:/usr/share/java/zookeeper.jar" \
    nohup java -Xmx256m -Dzookeeper.log.dir="$STATE" -Dlog4j.configuration=file:"$ROOT/scripts/kafka/zk-log4j.properties" \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$STATE/zoo.cfg" >"$STATE/zookeeper.log" 2>&1 &
  echo $! >"$STATE/zookeeper.pid"
  wait_until ZooKeeper zk_answers zookeeper
}

start_kafka() {
  alive kafka && return 0
  if [ ! -f "$STATE/kafka-logs/meta.properties" ]; then
    java_tool kafka.tools.StorageTool format --cluster-id "$(java_tool kafka.tools.StorageTool random-uuid)" \
      --config "$STATE/server.properties" --ignore-formatted >>"$STATE/kafka.log" 2>&1 \
      || die "formatting Kafka storage failed; see $STATE/kafka.log"
  fi
  nohup java -Xms256m -Xmx768m -XX:+UseG1GC -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2-broker.yaml" \
    -Dkafka.logs.dir="$STATE" -cp "$KAFKA_LIBS/*" kafka.Kafka "$STATE/server.properties" >>"$STATE/kafka.log" 2>&1 &
  echo $! >"$STATE/kafka.pid"
  wait_until Kafka kafka_answers kafka
}

stop_process() {
  local name=$1 pid
  alive "$name" || { rm -f "$STATE/$name.pid"; return 0; }
  pid=$(cat "$STATE/$name.pid")
  kill -CONT "$pid" 2>/dev/null || true
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do pid_alive "$pid" || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$STATE/$name.pid"
}

cmd_up() {
  # Also when a cluster is already running (perhaps started from another
  # checkout): the tools below run from this checkout's jars.
  ensure_installed
  # A cluster started before the SASL listener existed is restarted with it.
  if [ -f "$STATE/kafka.port" ] && [ ! -f "$STATE/kafka-sasl.port" ]; then
    stop_process kafka
    free_port >"$STATE/kafka-sasl.port"
  fi
  if alive kafka && alive zookeeper && zk_answers && kafka_answers; then
    log "already running (state in $STATE)"
    print_env
    return 0
  fi
  local started=$SECONDS
  mkdir -p "$STATE"
  if [ ! -f "$STATE/kafka.port" ]; then
    free_port >"$STATE/zookeeper.port"
    free_port >"$STATE/kafka.port"
    free_port >"$STATE/controller.port"
    free_port >"$STATE/kafka-sasl.port"
  fi
  write_configs
  start_zookeeper
  start_kafka
  log "Kafka $KAFKA_VERSION and ZooKeeper up in $((SECONDS - started))s (state in $STATE); topics are not auto-created"
  print_env
}

cmd_down() {
  stop_process kafka
  stop_process zookeeper
  rm -rf "$STATE"
  log "stopped; data removed"
}

cmd_status() {
  local rc=0
  for name in zookeeper kafka; do
    if alive "$name"; then
      echo "$name: running (pid $(cat "$STATE/$name.pid"), 127.0.0.1:$(cat "$STATE/$name.port"))"
    else
      echo "$name: stopped"
      rc=1
    fi
  done
  return $rc
}

main() {
  local cmd=${1:-}
  [ $# -gt 0 ] && shift
  case "$cmd" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) { alive kafka && alive zookeeper; } || die "no cluster is running"; print_env ;;
    pid) alive "$1" || die "$1 is not running"; cat "$STATE/$1.pid" ;;
    start)
      case "$1" in
        kafka) start_kafka ;;
        zookeeper) start_zookeeper ;;
        *) die "start kafka|zookeeper" ;;
      esac ;;
    stop) stop_process "$1" ;;
    kafka-topics) java_tool org.apache.kafka.tools.TopicCommand "$@" ;;
    kafka-consumer-groups) java_tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand "$@" ;;
    kafka-delete-records) java_tool org.apache.kafka.tools.DeleteRecordsCommand "$@" ;;
    kafka-get-offsets) java_tool org.apache.kafka.tools.GetOffsetShell "$@" ;;
    zkcli) "$ZK_BIN/zkCli.sh" -server "127.0.0.1:$(cat "$STATE/zookeeper.port")" "$@" ;;
    *)
      sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
      exit 64 ;;
  esac
}

main "$@"
