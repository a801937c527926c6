//! Command line and environment → validated, typed settings.
//!
//! [`cli`] declares the options (clap, with their environment variables);
//! this module checks them, before any socket opens: a bad setting becomes a
//! [`ConfigError`] naming the setting and the rule, and the binary exits 64.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod access;
mod checks;
mod cli;
mod cluster;
mod input;
mod kafka;

use crate::window::budget::Budget;
pub use access::Secret;
use access::{allowed_hosts, read_bouncer_keys, read_token};
use checks::{
    check_group, check_limits, checkpoint_interval, memory_budget, retention, validate_durations,
};
pub use cli::{
    Cli, Command, CountArgs, Format, InputArgs, LegacyArgs, OffsetReset, ProduceArgs, ServeArgs,
    TimeSource,
};
pub use cluster::{Cluster, ClusterArgs, is_instance_id};
pub use input::{Input, Time};
pub use kafka::parse_kafka_config;

/// Exit code for a bad setting (`EX_USAGE` from sysexits.h).
pub const EXIT_USAGE: i32 = 64;

/// The largest `n` accepted by `/api/v1/top`; the snapshot keeps this many.
pub const MAX_TOP_N: usize = 100_000;
/// Top lists up to this long are sorted once per slide; longer ones per request.
pub const SORTED_TOP_N: usize = 1_000;

/// A setting that breaks a rule.
#[derive(Debug, thiserror::Error)]
#[error("invalid {setting}: {rule}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub rule: String,
}

fn invalid(setting: &'static str, rule: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        rule: rule.into(),
    }
}

/// ZooKeeper connect string: servers and optional chroot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkConnect {
    pub servers: Vec<String>,
    pub chroot: Option<String>,
}

/// Where checkpoints go unless `--checkpoint-dir` says otherwise.
pub const DEFAULT_CHECKPOINT_DIR: &str = "./ipstats-checkpoint";

/// Validated settings of the service.
#[derive(Clone, Debug)]
pub struct Settings {
    pub brokers: Option<String>,
    pub topics: Vec<String>,
    pub group: String,
    pub zookeeper: Option<ZkConnect>,
    pub zookeeper_session_timeout: Duration,
    pub checkpoint_dir: PathBuf,
    /// `--checkpoint-dir` was given (the demo's state then lives inside it).
    pub checkpoint_dir_given: bool,
    pub checkpoint_interval: Duration,
    pub reset_checkpoint: bool,
    pub shutdown_grace: Duration,
    pub batch: Duration,
    pub window: Duration,
    pub slide: Duration,
    /// History kept for ad-hoc questions: at least the window.
    pub retention: Duration,
    /// `--memory-limit`: the counting state's budget, and the keys a
    /// summarized pane keeps within it.
    pub memory: Budget,
    pub max_rate_per_partition: u64,
    pub offset_reset: OffsetReset,
    pub listen: SocketAddr,
    pub input: Input,
    pub time: Time,
    pub kafka_config: Vec<(String, String)>,
    pub demo_rate: u64,
    pub max_event_streams: usize,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub auth_token: Option<Secret>,
    pub metrics_without_auth: bool,
    /// Host names requests may name; `None`: any.
    pub allowed_hosts: Option<Vec<String>>,
    /// `--rules`: read and checked at start (see `app`).
    pub rules_file: Option<PathBuf>,
    pub alert_webhook: Option<url::Url>,
    pub alertmanager: Option<url::Url>,
    pub alert_max_age: Duration,
    pub alert_queue: usize,
    /// `--cluster`: this instance is one of several on the group.
    pub cluster: Option<Cluster>,
    /// `--bouncer-keys-file`: the CrowdSec bouncers' API keys.
    pub bouncer_keys: Option<Vec<Secret>>,
    /// `--asn-db`, `--country-db`: opened and checked at start (see `app`).
    pub asn_db: Option<PathBuf>,
    pub country_db: Option<PathBuf>,
}

impl Settings {
    /// Panes in the window.
    pub fn window_panes(&self) -> usize {
        (self.window.as_nanos() / self.batch.as_nanos()) as usize
    }

    /// Panes kept after they slide out of the window (`--retention`).
    pub fn retained_panes(&self) -> usize {
        ((self.retention - self.window).as_nanos() / self.batch.as_nanos()) as usize
    }

    /// Batches per slide.
    pub fn slide_batches(&self) -> u64 {
        (self.slide.as_nanos() / self.batch.as_nanos()) as u64
    }

    pub fn is_demo(&self) -> bool {
        self.brokers.is_none()
    }

    /// Batches between checkpoints.
    pub fn checkpoint_batches(&self) -> u64 {
        (self.checkpoint_interval.as_nanos() / self.batch.as_nanos()) as u64
    }
}

impl TryFrom<ServeArgs> for Settings {
    type Error = ConfigError;

    fn try_from(a: ServeArgs) -> Result<Self, ConfigError> {
        let topics = parse_topics(&a.topics)?;
        validate_durations(a.batch, a.window, a.slide)?;
        if let Some(brokers) = &a.brokers {
            parse_brokers("--brokers", brokers)?;
        }
        check_group(&a.group)?;
        let zookeeper = a.zookeeper.as_deref().map(parse_zookeeper).transpose()?;
        check_limits(&a)?;
        let input = Input::try_from(a.input)?;
        let kafka_config = parse_kafka_config(&a.kafka_config)?;
        let checkpoint_interval = checkpoint_interval(a.checkpoint_interval, a.slide)?;
        if a.checkpoint_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(invalid("--checkpoint-dir", "must not be empty"));
        }
        let retention = retention(a.retention, a.window, a.slide, a.batch)?;
        let memory = memory_budget(a.memory_limit.as_deref(), retention, a.batch)?;
        let time_source = a.time_source.unwrap_or(TimeSource::Event);
        let cluster = a
            .cluster
            .check(a.listen, a.brokers.is_none(), time_source)?;
        Ok(Settings {
            cluster,
            alert_webhook: access::alert_url(
                "--alert-webhook",
                a.alert_webhook.as_deref(),
                &a.rules,
            )?,
            alertmanager: access::alert_url("--alertmanager", a.alertmanager.as_deref(), &a.rules)?,
            alert_max_age: a.alert_max_age,
            alert_queue: a.alert_queue as usize,
            rules_file: a.rules,
            brokers: a.brokers,
            topics,
            group: a.group,
            zookeeper,
            zookeeper_session_timeout: a.zookeeper_session_timeout,
            checkpoint_dir_given: a.checkpoint_dir.is_some(),
            checkpoint_dir: a
                .checkpoint_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CHECKPOINT_DIR)),
            checkpoint_interval,
            reset_checkpoint: a.reset_checkpoint,
            shutdown_grace: a.shutdown_grace,
            batch: a.batch,
            window: a.window,
            slide: a.slide,
            retention,
            memory,
            max_rate_per_partition: a.max_rate_per_partition,
            offset_reset: a.offset_reset,
            listen: a.listen,
            input,
            time: Time::new(
                time_source,
                a.time.time_field,
                a.lateness,
                a.max_future,
                a.window,
            )?,
            kafka_config,
            demo_rate: a.demo_rate,
            max_event_streams: a.max_event_streams,
            max_connections: a.max_connections,
            header_timeout: a.header_timeout,
            idle_timeout: a.idle_timeout,
            auth_token: a.auth_token_file.as_deref().map(read_token).transpose()?,
            bouncer_keys: a
                .bouncer_keys_file
                .as_deref()
                .map(read_bouncer_keys)
                .transpose()?,
            metrics_without_auth: a.metrics_without_auth,
            allowed_hosts: allowed_hosts(a.allowed_hosts.as_deref(), a.listen)?,
            asn_db: a.asn_db,
            country_db: a.country_db,
        })
    }
}

impl ProduceArgs {
    /// Checks the options; returns the extra librdkafka properties.
    pub fn validate(&self) -> Result<Vec<(String, String)>, ConfigError> {
        let extra = parse_kafka_config(&self.kafka_config)?;
        parse_brokers("--brokers", &self.brokers)?;
        parse_topics(&self.topic).map_err(|e| ConfigError {
            setting: "--topic",
            ..e
        })?;
        if !(0.0..=1.0).contains(&self.malformed_ratio) {
            return Err(invalid(
                "--malformed-ratio",
                format!("{} is outside 0..=1", self.malformed_ratio),
            ));
        }
        if !(self.zipf.is_finite() && self.zipf >= 0.0) {
            return Err(invalid(
                "--zipf",
                format!("{} is not a number >= 0", self.zipf),
            ));
        }
        if self.partitions < 1 {
            return Err(invalid(
                "--partitions",
                format!("{} must be at least 1", self.partitions),
            ));
        }
        if self.ips == 0 {
            return Err(invalid("--ips", "must be at least 1"));
        }
        if let Some(rate) = self.time_rate
            && !(rate.is_finite() && rate > 0.0 && rate <= 1e9)
        {
            return Err(invalid(
                "--time-rate",
                format!("{rate} is not a number of lines per second in (0, 1e9]"),
            ));
        }
        Ok(extra)
    }
}

impl TryFrom<LegacyArgs> for Settings {
    type Error = ConfigError;

    /// The eight arguments over the serve options (and their environment).
    fn try_from(l: LegacyArgs) -> Result<Self, ConfigError> {
        let seconds = |setting: &'static str, n: u64| {
            if n == 0 {
                Err(invalid(
                    setting,
                    "0 seconds; give a whole number of seconds ≥ 1",
                ))
            } else {
                Ok(Duration::from_secs(n))
            }
        };
        let args = ServeArgs {
            brokers: Some(l.legacy_brokers),
            topics: l.legacy_topics,
            group: l.group_id,
            zookeeper: Some(l.zk_servers),
            checkpoint_dir: Some(l.checkpoint_directory),
            batch: seconds("<batchSeconds>", l.batch_seconds)?,
            window: seconds("<windowSeconds>", l.window_seconds)?,
            slide: seconds("<slideSeconds>", l.slide_seconds)?,
            // The original job counted by arrival.
            time_source: Some(l.serve.time_source.unwrap_or(TimeSource::Arrival)),
            ..l.serve
        };
        // A rule broken by one of the eight arguments names it too.
        Settings::try_from(args).map_err(|mut e| {
            if let Some((_, _, positional)) = LegacyArgs::REPEATED
                .iter()
                .find(|(_, flag, _)| *flag == e.setting)
            {
                e.rule = format!("{} (the argument <{positional}>)", e.rule);
            }
            e
        })
    }
}

/// The command line: [`Cli`], with `ipstats legacy --help` leaving out
/// the options its eight arguments set (they are refused there, by
/// [`check_legacy_repeats`], which still sees them).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().mut_subcommand("legacy", |legacy| {
        LegacyArgs::REPEATED
            .iter()
            .fold(legacy, |legacy, (id, _, _)| {
                legacy.mut_arg(*id, |a| a.hide(true))
            })
    })
}

/// `ipstats legacy` with an option that one of its eight arguments sets
/// (`matches` are the legacy subcommand's): refused, naming both.
pub fn check_legacy_repeats(matches: &clap::ArgMatches) -> Result<(), ConfigError> {
    for (id, flag, positional) in LegacyArgs::REPEATED {
        if matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine) {
            return Err(invalid(
                flag,
                format!(
                    "ipstats legacy's argument <{positional}> sets it; give it once, as the argument"
                ),
            ));
        }
    }
    Ok(())
}

fn parse_topics(list: &str) -> Result<Vec<String>, ConfigError> {
    let topics: Vec<String> = list.split(',').map(|t| t.trim().to_string()).collect();
    for t in &topics {
        let legal = !t.is_empty()
            && t.len() <= 249
            && t != "."
            && t != ".."
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !legal {
            return Err(invalid(
                "--topics",
                format!("{t:?} is not a Kafka topic name (1-249 of [a-zA-Z0-9._-])"),
            ));
        }
    }
    let mut unique = topics.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != topics.len() {
        return Err(invalid("--topics", format!("{list:?} names a topic twice")));
    }
    Ok(topics)
}

/// `host:port` pairs, comma-separated.
pub fn parse_brokers(setting: &'static str, list: &str) -> Result<Vec<String>, ConfigError> {
    list.split(',')
        .map(|s| {
            let s = s.trim();
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| invalid(setting, format!("{s:?} is not host:port")))?;
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(invalid(setting, format!("{s:?} is not host:port")));
            }
            Ok(s.to_string())
        })
        .collect()
}

pub fn parse_zookeeper(connect: &str) -> Result<ZkConnect, ConfigError> {
    const SETTING: &str = "--zookeeper";
    let (hosts, chroot) = match connect.find('/') {
        Some(i) => (&connect[..i], Some(&connect[i..])),
        None => (connect, None),
    };
    let servers = parse_brokers(SETTING, hosts)?;
    let chroot = match chroot {
        None | Some("/") => None,
        Some(c) => {
            if c.ends_with('/') || c.contains("//") {
                return Err(invalid(
                    SETTING,
                    format!("chroot {c:?} must look like /a/b (no empty or trailing segments)"),
                ));
            }
            Some(c.to_string())
        }
    };
    Ok(ZkConnect { servers, chroot })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn help(subcommand: Option<&str>) -> String {
        let mut command = command();
        let command = match subcommand {
            Some(name) => command.find_subcommand_mut(name).expect("subcommand"),
            None => &mut command,
        };
        command.render_long_help().to_string()
    }

    #[test]
    fn help_says_what_the_program_does() {
        let serve = help(None);
        let token = &serve[serve.find("--auth-token-file").expect("listed")..];
        let token = &token[..token.find("\n\n").unwrap_or(token.len())];
        for open in crate::http::access::OPEN {
            assert!(
                token.contains(&format!("{open} "))
                    || token.contains(&format!("{open},"))
                    || token.contains(&format!("{open})")),
                "{open} in {token}"
            );
        }
        assert!(token.contains("16 characters"), "{token}");
        // What legacy's eight arguments set is not offered as an option.
        let legacy = help(Some("legacy"));
        let offered = |flag: &str| {
            legacy
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{flag} ")))
        };
        for (_, flag, _) in LegacyArgs::REPEATED {
            assert!(!offered(flag), "{flag} in {legacy}");
        }
        assert!(offered("--rules"), "the other serve options stay");
    }

    /// Why a command line made no settings.
    #[derive(Debug, thiserror::Error)]
    enum Refused {
        #[error(transparent)]
        Command(#[from] clap::Error),
        #[error(transparent)]
        Setting(#[from] ConfigError),
        #[error("not a serve command")]
        NotServe,
    }

    impl Refused {
        fn contains(&self, text: &str) -> bool {
            self.to_string().contains(text)
        }
    }

    fn settings(args: &[&str]) -> Result<Settings, Refused> {
        let cli = Cli::try_parse_from(std::iter::once("ipstats").chain(args.iter().copied()))?;
        let serve = match cli.command {
            None => cli.serve,
            Some(Command::Serve(s)) => *s,
            Some(Command::Legacy(l)) => return Ok(Settings::try_from(*l)?),
            Some(Command::Produce(_) | Command::Count(_)) => return Err(Refused::NotServe),
        };
        Ok(Settings::try_from(serve)?)
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = settings(&[]).expect("defaults are valid");
        assert!(s.is_demo());
        assert_eq!(s.topics, ["access-log"]);
        assert_eq!(s.group, "ipstats");
        assert_eq!(
            (s.batch, s.window, s.slide),
            (
                Duration::from_secs(1),
                Duration::from_secs(60),
                Duration::from_secs(5)
            )
        );
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.input.ip_field, "client_real_ip");
        assert_eq!(s.offset_reset, OffsetReset::Earliest);
        assert_eq!(s.window_panes(), 60);
        assert_eq!(s.slide_batches(), 5);
    }

    #[test]
    fn serve_subcommand_is_the_default() {
        let a = settings(&["serve", "--window", "10s"]).expect("valid");
        let b = settings(&["--window", "10s"]).expect("valid");
        assert_eq!(a.window, b.window);
    }

    #[test]
    fn the_memory_limit_names_the_least_a_shape_needs() {
        let err = settings(&[
            "--memory-limit",
            "1MiB",
            "--retention",
            "1h",
            "--batch",
            "100ms",
        ])
        .expect_err("36,000 panes do not fit in 1 MiB");
        assert!(
            err.contains("--memory-limit")
                && err.contains("36000 kept panes")
                && err.contains("MiB"),
            "{err}"
        );
        let s = settings(&["--memory-limit", "2GiB"]).expect("valid");
        assert_eq!(s.memory.bytes, 2 << 30);
        let default = settings(&[]).expect("valid").memory;
        assert!(
            default.bytes >= crate::window::budget::minimum(60),
            "{default:?}"
        );
    }

    #[test]
    fn window_must_be_a_multiple_of_batch() {
        let err = settings(&["--batch", "2s", "--window", "7s"]).expect_err("7s is not 2s-aligned");
        assert!(
            err.contains("--window") && err.contains("multiple"),
            "{err}"
        );
    }

    #[test]
    fn bad_settings_name_themselves() {
        for (args, setting) in [
            (&["--slide", "1500ms"][..], "--slide"),
            (&["--slide", "120s"], "--slide"),
            (&["--batch", "0s"], "--batch"),
            (&["--topics", "a,,b"], "--topics"),
            (&["--topics", "bad topic"], "--topics"),
            (&["--brokers", "localhost"], "--brokers"),
            (&["--zookeeper", "zk:2181/chroot/"], "--zookeeper"),
            (
                &["--kafka-config", "enable.auto.commit=true"],
                "--kafka-config",
            ),
            (&["--kafka-config", "no.such.property=1"], "--kafka-config"),
            (&["--kafka-config", "novalue"], "--kafka-config"),
            (&["--max-line-bytes", "1"], "--max-line-bytes"),
            (&["--window", "1h", "--batch", "10ms"], "--window"),
            (&["--listen", "nowhere"], "--listen"),
            (&["--offset-reset", "oldest"], "--offset-reset"),
            (&["--checkpoint-interval", "7s"], "--checkpoint-interval"),
            (&["--shutdown-grace", "0s"], "--shutdown-grace"),
            (&["--memory-limit", "lots"], "--memory-limit"),
            (&["--memory-limit", "1MiB"], "--memory-limit"),
        ] {
            let err = settings(args).expect_err("must be refused");
            assert!(err.contains(setting), "{args:?}: {err}");
        }
    }

    #[test]
    fn trusted_proxies_are_networks_and_the_ip_field_a_path() {
        let s = settings(&[
            "--trusted-proxies",
            "10.0.0.0/8, 2001:db8::/32,192.0.2.1",
            "--ip-field",
            "source.ip",
        ])
        .expect("valid");
        let shown: Vec<String> = s
            .input
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1/32"]);
        assert_eq!(s.input.ip_field, "source.ip");
        assert!(
            settings(&[])
                .expect("defaults")
                .input
                .trusted_proxies
                .is_empty()
        );
    }

    #[test]
    fn legacy_takes_the_original_eight_arguments() {
        let s = settings(&[
            "legacy",
            "zk1:2181,zk2:2181/kafka",
            "b1:9092",
            "proxy-access-log",
            "spark",
            "/tmp/ch",
            "5",
            "20",
            "20",
        ])
        .expect("the original example is valid");
        assert_eq!(s.brokers.as_deref(), Some("b1:9092"));
        assert_eq!(s.group, "spark");
        assert_eq!(
            s.zookeeper,
            Some(ZkConnect {
                servers: vec!["zk1:2181".into(), "zk2:2181".into()],
                chroot: Some("/kafka".into())
            })
        );
        assert_eq!(s.window_panes(), 4);
        let err = settings(&[
            "legacy", "zk:2181", "b:9092", "t", "g", "/tmp/c", "5", "21", "5",
        ])
        .expect_err("21 is not a multiple of 5");
        assert!(
            err.contains("--window") && err.contains("(the argument <windowSeconds>)"),
            "{err}"
        );
        // Beside the eight arguments, every serve option.
        let s = settings(&[
            "legacy",
            "zk:2181",
            "b:9092",
            "t",
            "g",
            "/tmp/c",
            "1",
            "60",
            "5",
            "--max-rate-per-partition",
            "100",
            "--listen",
            "127.0.0.1:9999",
            "--kafka-config",
            "client.rack=r1",
            "--offset-reset",
            "latest",
        ])
        .expect("serve options are taken");
        assert_eq!(s.max_rate_per_partition, 100);
        assert_eq!(s.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(s.kafka_config, [("client.rack".into(), "r1".into())]);
        assert_eq!(s.offset_reset, OffsetReset::Latest);
        assert_eq!(s.window_panes(), 60);
    }
}
