//! `--cluster` and its companions: how this instance joins the others of
//! its group, how they reach it, and how it finds them.

use std::net::SocketAddr;

use clap::Args;

use super::{ConfigError, TimeSource, invalid};

#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Join the other ipstats instances of --group: Kafka's consumer-group protocol assigns the
    /// partitions (cooperative-sticky; `--kafka-config session.timeout.ms=6000` sets how soon a
    /// dead or frozen instance's partitions move), each instance counts the partitions it owns,
    /// and every answer covers the whole cluster.
    #[arg(
        long,
        env = "IPSTATS_CLUSTER",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub cluster: bool,
    /// How the other instances reach this one's HTTP [default: http://<--listen>].
    #[arg(long, env = "IPSTATS_ADVERTISE_URL", value_name = "URL")]
    pub advertise_url: Option<String>,
    /// The other instances' URLs, comma-separated, when there is no --zookeeper (with it, each
    /// instance registers under /ipstats/<group>/instances/<id> and finds the others there).
    #[arg(long, env = "IPSTATS_PEERS", value_name = "URL,...")]
    pub peers: Option<String>,
    /// This instance's name in the cluster [default: <hostname>-<listen port>].
    #[arg(long, env = "IPSTATS_INSTANCE_ID", value_name = "ID")]
    pub instance_id: Option<String>,
}

/// A checked `--cluster` setting.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub instance_id: String,
    /// This instance's base URL, no trailing slash.
    pub advertise_url: String,
    /// The other instances' base URLs (`--peers`), no trailing slash.
    pub peers: Vec<String>,
}

/// The longest instance id: it names a znode and appears in every answer.
const MAX_ID_LEN: usize = 128;

pub fn is_instance_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A base URL of an instance: http or https, a host, no query; returned
/// without a trailing slash.
fn base_url(setting: &'static str, text: &str) -> Result<String, ConfigError> {
    let url = url::Url::parse(text.trim())
        .map_err(|e| invalid(setting, format!("{text:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            setting,
            format!("{text:?} must be an http:// or https:// URL with a host"),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            setting,
            format!("{text:?} must not carry a query or a fragment"),
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

impl ClusterArgs {
    /// The checked setting; `None` without `--cluster`, where the other
    /// options are refused rather than silently ignored.
    pub fn check(
        &self,
        listen: SocketAddr,
        demo: bool,
        time: TimeSource,
    ) -> Result<Option<Cluster>, ConfigError> {
        if !self.cluster {
            for (given, setting) in [
                (self.advertise_url.is_some(), "--advertise-url"),
                (self.peers.is_some(), "--peers"),
                (self.instance_id.is_some(), "--instance-id"),
            ] {
                if given {
                    return Err(invalid(setting, "applies only with --cluster"));
                }
            }
            return Ok(None);
        }
        if demo {
            return Err(invalid(
                "--cluster",
                "needs --brokers: the embedded demo broker lives inside one process",
            ));
        }
        if time == TimeSource::Arrival {
            return Err(invalid(
                "--cluster",
                "needs --time-source event or kafka: a partition that moves is rebuilt from \
                 Kafka by the records' own times, which arrival time does not have",
            ));
        }
        let instance_id = match &self.instance_id {
            Some(id) if is_instance_id(id) => id.clone(),
            Some(id) => {
                return Err(invalid(
                    "--instance-id",
                    format!("{id:?} must be 1 to {MAX_ID_LEN} letters, digits, '-', '_' or '.'"),
                ));
            }
            None => format!("{}-{}", crate::vocab::hostname(), listen.port()),
        };
        let advertise_url = match &self.advertise_url {
            Some(url) => base_url("--advertise-url", url)?,
            None if listen.ip().is_unspecified() => {
                return Err(invalid(
                    "--advertise-url",
                    format!(
                        "is needed when --listen {listen} names no address the others can reach"
                    ),
                ));
            }
            None => format!("http://{listen}"),
        };
        let peers = match &self.peers {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| base_url("--peers", s))
                .filter(|u| u.as_ref().map_or(true, |u| *u != advertise_url))
                .collect::<Result<_, _>>()?,
        };
        Ok(Some(Cluster {
            instance_id,
            advertise_url,
            peers,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cluster: bool) -> ClusterArgs {
        ClusterArgs {
            cluster,
            advertise_url: None,
            peers: None,
            instance_id: None,
        }
    }

    fn listen() -> SocketAddr {
        "127.0.0.1:8081".parse().expect("a value")
    }

    #[test]
    fn without_cluster_its_companions_are_refused() {
        assert!(
            args(false)
                .check(listen(), false, TimeSource::Event)
                .expect("a value")
                .is_none()
        );
        let a = ClusterArgs {
            peers: Some("http://a:1".into()),
            ..args(false)
        };
        let e = a
            .check(listen(), false, TimeSource::Event)
            .expect_err("an error");
        assert_eq!(e.setting, "--peers");
    }

    #[test]
    fn defaults_name_the_listen_address_and_peers_drop_this_instance() {
        let a = ClusterArgs {
            peers: Some("http://127.0.0.1:8081/, http://127.0.0.1:8082/".into()),
            ..args(true)
        };
        let c = a
            .check(listen(), false, TimeSource::Event)
            .expect("a value")
            .expect("a value");
        assert_eq!(c.advertise_url, "http://127.0.0.1:8081");
        assert_eq!(c.peers, vec!["http://127.0.0.1:8082".to_string()]);
        assert!(c.instance_id.ends_with("-8081"), "{}", c.instance_id);
    }

    #[test]
    fn demo_arrival_time_bad_ids_and_urls_are_refused() {
        let e = args(true)
            .check(listen(), true, TimeSource::Event)
            .expect_err("an error");
        assert_eq!(e.setting, "--cluster");
        let e = args(true)
            .check(listen(), false, TimeSource::Arrival)
            .expect_err("an error");
        assert!(e.rule.contains("arrival"), "{}", e.rule);
        let a = ClusterArgs {
            instance_id: Some("a b".into()),
            ..args(true)
        };
        assert_eq!(
            a.check(listen(), false, TimeSource::Event)
                .expect_err("an error")
                .setting,
            "--instance-id"
        );
        let a = ClusterArgs {
            advertise_url: Some("ftp://x".into()),
            ..args(true)
        };
        assert_eq!(
            a.check(listen(), false, TimeSource::Event)
                .expect_err("an error")
                .setting,
            "--advertise-url"
        );
        let e = args(true)
            .check(
                "0.0.0.0:80".parse().expect("a value"),
                false,
                TimeSource::Event,
            )
            .expect_err("an error");
        assert_eq!(e.setting, "--advertise-url");
    }
}
