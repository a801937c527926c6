//! `--kafka-config` and `IPSTATS_KAFKA_CONFIG`: librdkafka properties,
//! merged, checked by librdkafka itself, and the keys ipstats owns refused.

use super::{ConfigError, invalid};

/// Properties ipstats sets itself: overriding them would break exactly-once.
const RESERVED_KAFKA_KEYS: &[(&str, &str)] = &[
    ("bootstrap.servers", "use --brokers"),
    ("metadata.broker.list", "use --brokers"),
    ("group.id", "use --group"),
    (
        "enable.auto.commit",
        "offsets are committed only after a batch is counted",
    ),
    (
        "enable.auto.offset.store",
        "offsets are stored only after a batch is counted",
    ),
    ("auto.offset.reset", "use --offset-reset"),
];

/// The properties of `IPSTATS_KAFKA_CONFIG` (one per line; blank lines and
/// `#` comments skipped), then the flags': librdkafka keeps the last value
/// set, so a flag wins over the environment on the same key.
fn kafka_properties(flags: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut all = match std::env::var_os("IPSTATS_KAFKA_CONFIG") {
        None => Vec::new(),
        Some(value) => value
            .to_str()
            .ok_or_else(|| invalid("IPSTATS_KAFKA_CONFIG", "not UTF-8"))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect(),
    };
    all.extend(flags.iter().cloned());
    Ok(all)
}

pub fn parse_kafka_config(flags: &[String]) -> Result<Vec<(String, String)>, ConfigError> {
    const SETTING: &str = "--kafka-config";
    let pairs = kafka_properties(flags)?;
    let mut out = Vec::with_capacity(pairs.len());
    let mut check = rdkafka::ClientConfig::new();
    for pair in &pairs {
        let (key, value) = pair
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| invalid(SETTING, format!("{pair:?} is not KEY=VALUE")))?;
        let key = key.trim();
        if let Some((_, why)) = RESERVED_KAFKA_KEYS.iter().find(|(k, _)| *k == key) {
            return Err(invalid(SETTING, format!("{key} cannot be set here: {why}")));
        }
        check.set(key, value);
        out.push((key.to_string(), value.to_string()));
    }
    // librdkafka knows its properties; ask it, without opening a connection.
    check
        .create_native_config()
        .map_err(|e| invalid(SETTING, e.to_string()))?;
    // Some rules hold between properties (SASL without credentials): a
    // client without bootstrap servers checks them and connects nowhere.
    check
        .create::<rdkafka::consumer::BaseConsumer>()
        .map_err(|e| {
            let why = e.to_string();
            let why = why.strip_prefix("Client creation error: ").unwrap_or(&why);
            let hint = if why.contains("GSSAPI") {
                " (sasl.mechanisms defaults to GSSAPI: set it, e.g. sasl.mechanisms=PLAIN)"
            } else {
                ""
            };
            invalid(
                SETTING,
                format!("librdkafka refuses these properties: {why}{hint}"),
            )
        })?;
    Ok(out)
}
