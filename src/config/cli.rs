//! The command line: subcommands, options and the environment variable of
//! each (their doc comments are `--help`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Sliding-window visit counts per client IP from Kafka access logs, served live over HTTP.
#[derive(Debug, Parser)]
#[command(name = "ipstats", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default). Without --brokers: the embedded demo.
    Serve(Box<ServeArgs>),
    /// Write realistic nginx access-log lines into a Kafka topic: JSON (escape=json) or, with
    /// --format clf, the default combined text.
    Produce(ProduceArgs),
    /// The original Spark job's eight arguments, for drop-in migration; every
    /// serve option and environment variable applies beside them.
    Legacy(Box<LegacyArgs>),
    /// The top-N of a log file (or `-` for stdin), printed as `/api/v1/top` answers.
    Count(CountArgs),
}

/// How a record's bytes are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per record (nginx `log_format ... escape=json`).
    #[default]
    Json,
    /// NCSA common/combined text (nginx's default `combined`, Apache `common`/`combined`).
    Clf,
}

/// Which time puts a record in a pane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TimeSource {
    /// The log line's own time (--time-field).
    Event,
    /// The batch in which the record was polled (the original job).
    Arrival,
    /// The Kafka record's timestamp.
    Kafka,
}

impl TimeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeSource::Event => "event",
            TimeSource::Arrival => "arrival",
            TimeSource::Kafka => "kafka",
        }
    }
}

/// When no offset is stored for a partition, or the stored one is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OffsetReset {
    /// The oldest record still in the partition (the original job's choice).
    Earliest,
    /// Only records produced from now on.
    Latest,
    /// Refuse to start, naming the partition.
    Fail,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Kafka bootstrap servers (host:port,...). Absent: an embedded demo broker with generated traffic.
    #[arg(long, env = "IPSTATS_BROKERS", value_name = "LIST")]
    pub brokers: Option<String>,
    /// Topics to consume, comma-separated.
    #[arg(
        long,
        env = "IPSTATS_TOPICS",
        value_name = "LIST",
        default_value = "access-log"
    )]
    pub topics: String,
    /// Consumer group: the ZooKeeper offset path and the Kafka group offsets are committed under it.
    #[arg(
        long,
        env = "IPSTATS_GROUP",
        value_name = "ID",
        default_value = "ipstats"
    )]
    pub group: String,
    /// ZooKeeper for offsets: host:port[,host:port][/chroot]. Absent: no ZooKeeper offsets.
    #[arg(long, env = "IPSTATS_ZOOKEEPER", value_name = "CONNECT")]
    pub zookeeper: Option<String>,
    /// ZooKeeper session timeout (2s..=2m): how long a crashed instance's ownership lingers.
    #[arg(
        long,
        env = "IPSTATS_ZOOKEEPER_SESSION_TIMEOUT",
        value_name = "DUR",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub zookeeper_session_timeout: Duration,
    /// Directory for checkpoints and the instance id [default: ./ipstats-checkpoint]. The demo
    /// (no --brokers) keeps its state only as long as its embedded broker's records: in a
    /// directory ipstats-demo-<pid> inside this one (default: the system's temporary
    /// directory), removed at exit.
    #[arg(long, env = "IPSTATS_CHECKPOINT_DIR", value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// How often state is checkpointed: a whole multiple of --slide, at most 24h. Default: 5 slides.
    #[arg(long, env = "IPSTATS_CHECKPOINT_INTERVAL", value_name = "DUR", value_parser = humantime::parse_duration)]
    pub checkpoint_interval: Option<Duration>,
    /// Discard the state in --checkpoint-dir and start afresh (start offsets then come from
    /// ZooKeeper or the Kafka group).
    #[arg(
        long,
        env = "IPSTATS_RESET_CHECKPOINT",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub reset_checkpoint: bool,
    /// How long a graceful stop (SIGTERM, SIGINT) may take (1s..=10m): last batch, checkpoint, commits.
    #[arg(
        long,
        env = "IPSTATS_SHUTDOWN_GRACE",
        value_name = "DUR",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub shutdown_grace: Duration,
    /// Batch interval (10ms..=1h): records consumed during one batch form one pane.
    #[arg(long, env = "IPSTATS_BATCH", value_name = "DUR", default_value = "1s", value_parser = humantime::parse_duration)]
    pub batch: Duration,
    /// Window length: a whole multiple of --batch, at most 7 days and 100000 panes.
    #[arg(long, env = "IPSTATS_WINDOW", value_name = "DUR", default_value = "60s", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// How much history is kept for questions about other windows (`window=`, `end=`): a whole
    /// multiple of --slide, at least --window, at most 7 days and 1000000 panes. Default: --window.
    #[arg(long, env = "IPSTATS_RETENTION", value_name = "DUR", value_parser = humantime::parse_duration)]
    pub retention: Option<Duration>,
    /// The counting state's memory budget (512MiB, 4GiB, 800MB): counts are exact until it is
    /// reached, then the panes holding the most addresses are summarized (frequent items with
    /// error bounds). Default: a quarter of the machine's memory or of the cgroup's limit,
    /// whichever is smaller; a value below what the window and history need is refused, naming it.
    #[arg(long, env = "IPSTATS_MEMORY_LIMIT", value_name = "SIZE")]
    pub memory_limit: Option<String>,
    /// How often results are published; a whole multiple of --batch, at most --window.
    #[arg(long, env = "IPSTATS_SLIDE", value_name = "DUR", default_value = "5s", value_parser = humantime::parse_duration)]
    pub slide: Duration,
    /// Records per second per partition, 0 = unlimited (Spark's maxRatePerPartition).
    #[arg(
        long,
        env = "IPSTATS_MAX_RATE_PER_PARTITION",
        value_name = "N",
        default_value_t = 0
    )]
    pub max_rate_per_partition: u64,
    /// Where to start a partition without a usable stored offset (the checkpoint's, then
    /// ZooKeeper's, then the Kafka group's).
    #[arg(
        long,
        env = "IPSTATS_OFFSET_RESET",
        value_enum,
        default_value = "earliest"
    )]
    pub offset_reset: OffsetReset,
    /// Which time puts a record in a pane: event (the log line's own time; default), arrival
    /// (the batch in which it was polled; `ipstats legacy`'s default) or kafka (the record's
    /// timestamp).
    #[arg(long, env = "IPSTATS_TIME_SOURCE", value_enum, value_name = "SOURCE")]
    pub time_source: Option<TimeSource>,
    #[command(flatten)]
    pub time: TimeFieldArgs,
    #[command(flatten)]
    pub cluster: super::ClusterArgs,
    /// How far behind the window's end a record may arrive and still join its pane (shorter
    /// than --window); older records are counted as late.
    #[arg(
        long,
        env = "IPSTATS_LATENESS",
        value_name = "DUR",
        default_value = "5s",
        value_parser = humantime::parse_duration
    )]
    pub lateness: Duration,
    /// Records whose time is further ahead of the wall clock are skipped as future_time
    /// (at most 24h).
    #[arg(
        long,
        env = "IPSTATS_MAX_FUTURE",
        value_name = "DUR",
        default_value = "5m",
        value_parser = humantime::parse_duration
    )]
    pub max_future: Duration,
    /// HTTP listen address.
    #[arg(
        long,
        env = "IPSTATS_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub input: InputArgs,
    /// Extra librdkafka property (security.protocol, sasl.*, ssl.*, ...); repeatable.
    /// The environment variable IPSTATS_KAFKA_CONFIG adds more, one per line
    /// (e.g. the credentials, kept off the command line); a flag wins on the same key.
    #[arg(long, value_name = "KEY=VALUE")]
    pub kafka_config: Vec<String>,
    /// Lines per second the embedded demo generates (demo mode only; 0 = as fast as possible, at most 1000000).
    #[arg(
        long,
        env = "IPSTATS_DEMO_RATE",
        value_name = "N",
        default_value_t = 2000
    )]
    pub demo_rate: u64,
    /// Live event streams (/api/v1/events) open at once (1..=100000); more are answered 503.
    #[arg(
        long,
        env = "IPSTATS_MAX_EVENT_STREAMS",
        value_name = "N",
        default_value_t = 256
    )]
    pub max_event_streams: usize,
    /// Open HTTP connections at most (16..=1000000; lowered to fit the open-files limit);
    /// at the cap, the connection idle the longest is closed.
    #[arg(
        long,
        env = "IPSTATS_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 4096
    )]
    pub max_connections: usize,
    /// A request's header must arrive within this (100ms..=1h), or the connection is closed.
    #[arg(long, env = "IPSTATS_HEADER_TIMEOUT", value_name = "DUR", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// A file holding a bearer token (16 characters or more; surrounding whitespace is ignored)
    /// that requests must carry (Authorization: Bearer, or ?access_token=). Open without it:
    /// /healthz and /readyz (probes), the dashboard's files /, /dashboard.js and /dashboard.css
    /// and /openapi.yaml (no data in them), /metrics with --metrics-without-auth, and the CrowdSec
    /// decision routes /v1/decisions/stream and /v1/decisions (they take a bouncer's X-Api-Key).
    #[arg(long, env = "IPSTATS_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// CrowdSec bouncers' API keys, one per line (16+ characters): turns on the Local API's
    /// decision routes /v1/decisions/stream and /v1/decisions (header X-Api-Key).
    #[arg(long, env = "IPSTATS_BOUNCER_KEYS_FILE", value_name = "FILE")]
    pub bouncer_keys_file: Option<PathBuf>,
    /// A MaxMind DB of autonomous systems (GeoLite2-ASN, DB-IP ASN Lite, ...): answers and rules
    /// by AS (group=asn, /api/v1/asns/{asn}, key = "asn"). Re-read on SIGHUP; a bad file is
    /// refused (at start: exit 64; on SIGHUP the databases in force stay).
    #[arg(long, env = "IPSTATS_ASN_DB", value_name = "FILE")]
    pub asn_db: Option<PathBuf>,
    /// A MaxMind DB of countries (GeoLite2-Country/City, DB-IP Country Lite, ...): answers and
    /// rules by country (group=country, key = "country"). Re-read on SIGHUP like --asn-db.
    #[arg(long, env = "IPSTATS_COUNTRY_DB", value_name = "FILE")]
    pub country_db: Option<PathBuf>,
    /// With --auth-token-file: /metrics is open too (for a Prometheus without the token).
    #[arg(
        long,
        env = "IPSTATS_METRICS_WITHOUT_AUTH",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub metrics_without_auth: bool,
    /// Host header names answered, comma-separated, or * for any. Default: on
    /// a loopback --listen, localhost,127.0.0.1,[::1] (against DNS rebinding); else any.
    #[arg(long, env = "IPSTATS_ALLOWED_HOSTS", value_name = "LIST")]
    pub allowed_hosts: Option<String>,
    /// Rules file (TOML): keys to flag when their count over a window crosses a threshold
    /// (/api/v1/alerts, /api/v1/blocklist). Re-read on SIGHUP; a bad file is refused with the
    /// line and the reason (at start: exit 64; on SIGHUP the rules in force stay).
    #[arg(long, env = "IPSTATS_RULES", value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// POST each alert transition (JSON) to this URL; retried with backoff in order, from a
    /// bounded queue (overflow counted); never blocks ingest. Needs --rules.
    #[arg(long, env = "IPSTATS_ALERT_WEBHOOK", value_name = "URL")]
    pub alert_webhook: Option<String>,
    /// Prometheus Alertmanager's base URL: alerts are pushed to its /api/v2/alerts, re-sent
    /// while firing and resolved with endsAt. Needs --rules.
    #[arg(long, env = "IPSTATS_ALERTMANAGER", value_name = "URL")]
    pub alertmanager: Option<String>,
    /// Alert transitions about data older than this (event time against the clock, as in a
    /// replayed backlog) are recorded but not sent to the webhook or Alertmanager.
    #[arg(long, env = "IPSTATS_ALERT_MAX_AGE", value_name = "DUR", default_value = "5m", value_parser = humantime::parse_duration)]
    pub alert_max_age: Duration,
    /// Transitions each receiver (--alert-webhook, --alertmanager) may have waiting while it is
    /// down or slow (1..=1000000); beyond that new ones are dropped and counted
    /// (ipstats_alert_deliveries_total{result="dropped"}).
    #[arg(long, env = "IPSTATS_ALERT_QUEUE", value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub alert_queue: u32,
    /// A connection with no request in progress for this long (100ms..=1h) is closed.
    #[arg(long, env = "IPSTATS_IDLE_TIMEOUT", value_name = "DUR", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "IPSTATS_BROKERS", value_name = "LIST")]
    pub brokers: String,
    /// Topic to write to; created with --partitions if missing.
    #[arg(
        long,
        env = "IPSTATS_TOPIC",
        value_name = "NAME",
        default_value = "access-log"
    )]
    pub topic: String,
    /// Lines per second, 0 = as fast as possible.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub rate: u64,
    /// Lines to write, 0 = until interrupted.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub count: u64,
    /// Distinct client addresses to draw from.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub ips: usize,
    /// Zipf exponent of the address popularity (0 = uniform).
    #[arg(long, value_name = "S", default_value_t = 1.1)]
    pub zipf: f64,
    /// Random seed: the same seed (and --start-time) writes the same lines.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Log time of the first line, RFC 3339 in UTC (2026-11-24T06:00:00Z): with
    /// --seed, the same bytes every run. Default: the wall clock as each line is written.
    #[arg(long, value_name = "TIME", value_parser = humantime::parse_rfc3339_weak)]
    pub start_time: Option<std::time::SystemTime>,
    /// Lines per second of log time: line i is stamped start + i / N (default
    /// 1000 with --start-time; without it, the start is now).
    #[arg(long, value_name = "N")]
    pub time_rate: Option<f64>,
    /// Share of malformed lines (0..=1: not JSON, missing field, invalid IP, binary).
    #[arg(long, value_name = "RATIO", default_value_t = 0.01)]
    pub malformed_ratio: f64,
    /// Lines written as json (nginx `escape=json`) or clf (nginx's default `combined`); the
    /// same seed writes the same requests in either.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Partitions for the topic if it has to be created.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub partitions: i32,
    /// Also write every line, exactly as produced, to this file (ground truth for tests).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Extra librdkafka property (security.protocol, sasl.*, ssl.*, ...); repeatable.
    /// The environment variable IPSTATS_KAFKA_CONFIG adds more, one per line
    /// (e.g. the credentials, kept off the command line); a flag wins on the same key.
    #[arg(long, value_name = "KEY=VALUE")]
    pub kafka_config: Vec<String>,
}

/// `ipstats legacy <zkServers> <brokers> <topics> <groupId> <checkpointDirectory> <batchSeconds> <windowSeconds> <slideSeconds> [SERVE OPTIONS]`
///
/// The eight arguments of the original job, in its order; every `serve`
/// option and environment variable applies beside them. An option that
/// repeats one of the eight (`--brokers` …) is refused; its environment
/// variable is overridden by the argument.
#[derive(Debug, Clone, Args)]
pub struct LegacyArgs {
    /// ZooKeeper connect string (host:port[,host:port][/chroot]): offsets are kept under /consumers/<groupId>/offsets.
    #[arg(value_name = "zkServers")]
    pub zk_servers: String,
    /// Kafka bootstrap servers (host:port,...).
    #[arg(value_name = "brokers")]
    pub legacy_brokers: String,
    /// Topics to consume, comma-separated.
    #[arg(value_name = "topics")]
    pub legacy_topics: String,
    /// Consumer group: ZooKeeper's offset path and the Kafka group.
    #[arg(value_name = "groupId")]
    pub group_id: String,
    /// Directory for checkpoints (the job's checkpointDirectory).
    #[arg(value_name = "checkpointDirectory")]
    pub checkpoint_directory: PathBuf,
    /// Batch interval in whole seconds (1..=3600).
    #[arg(value_name = "batchSeconds")]
    pub batch_seconds: u64,
    /// Window length in whole seconds: a multiple of batchSeconds, at most 7 days.
    #[arg(value_name = "windowSeconds")]
    pub window_seconds: u64,
    /// Slide in whole seconds: a multiple of batchSeconds, at most windowSeconds.
    #[arg(value_name = "slideSeconds")]
    pub slide_seconds: u64,
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl LegacyArgs {
    /// The serve options the eight positional arguments set: clap's id,
    /// the flag, the argument.
    pub const REPEATED: [(&'static str, &'static str, &'static str); 8] = [
        ("zookeeper", "--zookeeper", "zkServers"),
        ("brokers", "--brokers", "brokers"),
        ("topics", "--topics", "topics"),
        ("group", "--group", "groupId"),
        ("checkpoint_dir", "--checkpoint-dir", "checkpointDirectory"),
        ("batch", "--batch", "batchSeconds"),
        ("window", "--window", "windowSeconds"),
        ("slide", "--slide", "slideSeconds"),
    ];
}

/// `ipstats count FILE|-`
#[derive(Debug, Clone, Args)]
pub struct CountArgs {
    /// The log file, one request per line as --format (and --envelope) say; `-` reads
    /// standard input.
    pub file: PathBuf,
    #[command(flatten)]
    pub time: TimeFieldArgs,
    /// How many IPs to print (1..=100000).
    #[arg(short, long, value_name = "N", default_value_t = 10)]
    pub n: usize,
    /// Group IPv4 addresses into networks of this prefix length (0..=32), as
    /// /api/v1/top?prefix4= does; IPv6 stays /128 unless --prefix6 is given.
    #[arg(long, value_name = "BITS", value_parser = clap::value_parser!(u8).range(0..=32))]
    pub prefix4: Option<u8>,
    /// Group IPv6 addresses into networks of this prefix length (0..=128); IPv4 stays /32
    /// unless --prefix4 is given.
    #[arg(long, value_name = "BITS", value_parser = clap::value_parser!(u8).range(0..=128))]
    pub prefix6: Option<u8>,
    #[command(flatten)]
    pub input: InputArgs,
}

/// Where a line's time is: the same for `serve` and `count`.
#[derive(Debug, Clone, Args)]
pub struct TimeFieldArgs {
    /// The line's time: a dotted JSON path holding nginx $time_local, RFC 3339
    /// ($time_iso8601) or epoch seconds ($msec); CLF reads its [date]. serve reads it with
    /// --time-source event; count's window spans the times read (a line without one is
    /// counted all the same).
    #[arg(
        long,
        env = "IPSTATS_TIME_FIELD",
        value_name = "PATH",
        default_value = "time_local"
    )]
    pub time_field: String,
}

/// How records are read and where the client is in them: the same for
/// `serve` (and `legacy`) and `count`.
#[derive(Debug, Clone, Args)]
pub struct InputArgs {
    /// How records are read: json (one object per record) or clf (NCSA common/combined:
    /// the client is the first field).
    #[arg(long, env = "IPSTATS_FORMAT", value_enum, default_value = "json")]
    pub format: Format,
    /// Records are JSON envelopes whose string field at this (dotted) path holds the raw
    /// line, read with --format: message (Filebeat, Vector), log (Fluent Bit, Docker).
    #[arg(long, env = "IPSTATS_ENVELOPE", value_name = "FIELD")]
    pub envelope: Option<String>,
    /// JSON field holding the client IP: a dotted path into nested objects
    /// (source.ip). A value "a, b, c" is an X-Forwarded-For list (see --trusted-proxies).
    #[arg(
        long,
        env = "IPSTATS_IP_FIELD",
        value_name = "PATH",
        default_value = "client_real_ip"
    )]
    pub ip_field: String,
    /// Networks of your own proxies, comma-separated CIDRs (10.0.0.0/8,2001:db8::/32): in an
    /// X-Forwarded-For list the client is the right-most address not in them (none given: the
    /// right-most).
    #[arg(long, env = "IPSTATS_TRUSTED_PROXIES", value_name = "CIDRS")]
    pub trusted_proxies: Option<String>,
    /// Lines longer than this (256..=16777216) are skipped as `too_large`.
    #[arg(
        long,
        env = "IPSTATS_MAX_LINE_BYTES",
        value_name = "BYTES",
        default_value_t = 64 * 1024
    )]
    pub max_line_bytes: usize,
}
