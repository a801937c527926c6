//! The steps of start-up, each a short function, in the order
//! [`super::App::start`] takes them: what a step starts runs under
//! [`Parts`], with its stage and the way it is told to stop.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use futures_util::FutureExt;
use rdkafka::config::ClientConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::parts::{Parts, Report, Signal, Stage};
use super::startup::Startup;
use super::{DemoDir, HTTP_PATIENCE, MONITOR_INTERVAL, blocking, console};
use crate::answers::{self, Answers, Pool};
use crate::checkpoint;
use crate::cluster::fanout::{Fanout, Shared};
use crate::cluster::registry::{self, Members};
use crate::cluster::{Cluster, Ownership};
use crate::config::{ConfigError, OffsetReset, Secret, Settings};
use crate::deliver::{self, Targets};
use crate::http::access::Access;
use crate::http::serve::{ConnectionLimits, raise_fd_limit, serve};
use crate::http::{AppData, AppState, ServiceInfo, Sources, Streams, router};
use crate::kafka::{
    ClusterView, KafkaConsumer, KafkaContext, MonitorClients, Rebalances, ViewReceiver,
    consumer_config, run_monitor,
};
use crate::log_limit::LogLimit;
use crate::metrics::Metrics;
use crate::offsets::committed::Committed;
use crate::offsets::instance::instance_id;
use crate::offsets::zookeeper::ZkOptions;
use crate::owners::Owners;
use crate::rules::outbox::{self, Outbox};
use crate::rules::{Limits, Rules};
use crate::snapshot::{Published, Snapshot};
use crate::stop::Stop;
use crate::tools::demo;
use crate::vocab::Health;

/// `--rules`, checked before anything starts: a bad file is a bad setting
/// (exit 64), named with its line.
pub fn load_rules(settings: &Settings) -> anyhow::Result<Option<Arc<Rules>>> {
    let Some(path) = &settings.rules_file else {
        return Ok(None);
    };
    let limits = Limits {
        batch: settings.batch,
        retention: settings.retention,
        asn_db: settings.asn_db.is_some(),
        country_db: settings.country_db.is_some(),
    };
    let rules = Rules::load(path.clone(), limits).map_err(|error| ConfigError {
        setting: "--rules",
        rule: error.to_string(),
    })?;
    Ok(Some(rules))
}

/// `--asn-db` and `--country-db`, opened and checked: a bad file stops the
/// start (exit 64), naming its option.
pub fn load_owners(settings: &Settings) -> anyhow::Result<Option<Arc<Owners>>> {
    let owners =
        Owners::open(settings.asn_db.clone(), settings.country_db.clone()).map_err(|error| {
            ConfigError {
                setting: error.option,
                rule: format!("{}: {}", error.path.display(), error.reason),
            }
        })?;
    if let Some(owners) = &owners {
        for db in owners.info() {
            info!(option = db.option, file = %db.path, kind = %db.kind, "database of owners loaded");
        }
    }
    Ok(owners)
}

/// Demo data lives as long as the embedded broker: its state is
/// checkpointed like real data, into a directory thrown away at exit,
/// inside --checkpoint-dir when one is given.
pub async fn demo_dir(settings: &mut Settings) -> anyhow::Result<Option<DemoDir>> {
    if !settings.is_demo() {
        return Ok(None);
    }
    let parent = if settings.checkpoint_dir_given {
        settings.checkpoint_dir.clone()
    } else {
        std::env::temp_dir()
    };
    let dir = DemoDir(parent.join(format!("ipstats-demo-{}", std::process::id())));
    settings.checkpoint_dir = dir.0.clone();
    let path: PathBuf = dir.0.clone();
    blocking(move || {
        let _ = std::fs::remove_dir_all(&path);
        Ok(())
    })
    .await?;
    Ok(Some(dir))
}

/// Before any socket: a directory another process uses, or one that
/// cannot be created, stops the start here.
pub async fn lock_dir(settings: &Settings) -> anyhow::Result<checkpoint::lock::DirLock> {
    let dir = settings.checkpoint_dir.clone();
    blocking(move || Ok(checkpoint::lock::lock(&dir)?)).await
}

/// The listener, bound before anything else starts (the demo broker, Kafka
/// clients): a busy port is the first error, not the last. Descriptors: as
/// many as allowed, and HTTP clients never get them all.
pub async fn bind(settings: &Settings) -> anyhow::Result<(TcpListener, ConnectionLimits)> {
    let fd_limit = match raise_fd_limit() {
        Ok((soft, hard)) => {
            info!(soft, hard, "open-files limit");
            soft
        }
        Err(error) => {
            warn!(%error, "reading the open-files limit failed; assuming 1024");
            1024
        }
    };
    let connections = ConnectionLimits {
        max: settings.max_connections,
        header_timeout: settings.header_timeout,
        idle_timeout: settings.idle_timeout,
    }
    .within(fd_limit);
    if connections.max < settings.max_connections {
        warn!(
            max_connections = connections.max,
            asked = settings.max_connections,
            fd_limit,
            "--max-connections lowered to fit the open-files limit"
        );
    }
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", settings.listen))?;
    Ok((listener, connections))
}

/// What the parts write and HTTP reads: the published view, health,
/// metrics (every rule's and receiver's series at zero from the first
/// scrape), committed offsets and the checkpoint's status.
pub fn sources(
    settings: &Settings,
    rules: Option<&Arc<Rules>>,
    owners: Option<Arc<Owners>>,
) -> anyhow::Result<Sources> {
    let metrics = Metrics::new().context("creating metrics")?;
    metrics.offset_stores(settings.zookeeper.is_some());
    metrics
        .state_budget_bytes
        .set(i64::try_from(settings.memory.bytes).unwrap_or(i64::MAX));
    // One instance until a --cluster registry finds more.
    metrics.cluster_instances.set(1);
    let in_force = rules.map(|r| r.current());
    outbox::declare_series(&metrics, in_force.as_deref().map_or(&[][..], Vec::as_slice));
    deliver::declare_series(
        &metrics,
        settings.alert_webhook.is_some(),
        settings.alertmanager.is_some(),
    );
    Ok(Sources {
        published: Published::new(Snapshot::empty(settings.window, settings.slide)),
        health: Arc::new(Health::new(settings.is_demo())),
        metrics,
        committed: Arc::new(Committed::new(settings.zookeeper.is_some())),
        checkpoint: Arc::new(checkpoint::Status::default()),
        owners,
    })
}

/// SIGHUP would end the process (its default); from here on it asks for a
/// reload instead.
pub fn reload_on_hangup(
    parts: &Parts,
    rules: Option<Arc<Rules>>,
    owners: Option<Arc<Owners>>,
) -> anyhow::Result<()> {
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let cancel = CancellationToken::new();
    parts.task(
        "reload",
        Stage::Serve,
        Signal::Token(cancel.clone()),
        Report::FailuresOnly,
        None,
        console::reload_on_hangup(hangups, rules, owners, cancel),
    );
    Ok(())
}

/// With `--zookeeper`: where it is, and this instance's name there.
pub async fn zookeeper(
    settings: &Settings,
    cluster: Option<&ClusterParts>,
) -> anyhow::Result<Option<ZkOptions>> {
    let Some(connect) = &settings.zookeeper else {
        return Ok(None);
    };
    let dir = settings.checkpoint_dir.clone();
    let instance_id = match &settings.cluster {
        Some(c) => c.instance_id.clone(),
        None => blocking(move || Ok(instance_id(&dir)?)).await?,
    };
    Ok(Some(ZkOptions {
        connect: connect.clone(),
        group: settings.group.clone(),
        session_timeout: settings.zookeeper_session_timeout,
        instance_id,
        ownership: cluster.map(|c| c.ownership.clone()),
    }))
}

/// `--cluster`: what ingest, the registry, the committers and the answers share.
pub struct ClusterParts {
    pub settings: Cluster,
    pub ownership: Arc<Ownership>,
    pub members: Members,
    pub leader: registry::Leader,
    pub rebalances: Arc<Rebalances>,
}

pub fn cluster(settings: &Settings) -> Option<ClusterParts> {
    let cluster = settings.cluster.clone()?;
    Some(ClusterParts {
        members: registry::initial(&cluster),
        leader: Arc::default(),
        settings: cluster,
        ownership: Arc::new(Ownership::new(settings.zookeeper.is_some())),
        rebalances: Arc::default(),
    })
}

/// `--cluster` with ZooKeeper: the registry keeps this instance listed
/// and its partitions fenced.
pub fn registry(
    cluster: Option<&ClusterParts>,
    zookeeper: Option<&ZkOptions>,
    shared: &Sources,
    parts: &Parts,
) {
    let (Some(c), Some(options)) = (cluster, zookeeper) else {
        return;
    };
    let cancel = CancellationToken::new();
    parts.task(
        "cluster registry",
        Stage::Commit,
        Signal::Token(cancel.clone()),
        Report::FailuresOnly,
        None,
        registry::run(
            c.settings.clone(),
            registry::RegistryOptions {
                connect: options.connect.clone(),
                group: options.group.clone(),
                session_timeout: options.session_timeout,
            },
            c.ownership.clone(),
            c.members.clone(),
            c.leader.clone(),
            shared.metrics.clone(),
            cancel,
        ),
    );
}

/// `--cluster` with `--rules` and ZooKeeper: the leader evaluates the rules
/// on the cluster's counts and alone delivers alerts.
pub fn cluster_rules(
    settings: &Settings,
    fanout: Option<Arc<Fanout>>,
    rules: Option<&Arc<Rules>>,
    outbox: Option<Outbox>,
    zookeeper: Option<&ZkOptions>,
    (shared, parts): (&Sources, &Parts),
) {
    let (Some(fanout), Some(rules), Some(options)) = (fanout, rules, zookeeper) else {
        return;
    };
    let task = crate::cluster::rules::Task {
        leader: fanout.leader.clone(),
        fanout,
        rules: rules.clone(),
        batch: settings.batch,
        slide: settings.slide,
        outbox,
        metrics: shared.metrics.clone(),
        zookeeper: registry::RegistryOptions {
            connect: options.connect.clone(),
            group: options.group.clone(),
            session_timeout: options.session_timeout,
        },
    };
    let cancel = CancellationToken::new();
    parts.task(
        "cluster rules",
        Stage::Serve,
        Signal::Token(cancel.clone()),
        Report::FailuresOnly,
        None,
        task.run(cancel),
    );
}

/// `--brokers`, or the embedded demo broker started with its traffic.
pub async fn brokers(settings: &Settings, parts: &Parts) -> anyhow::Result<String> {
    if let Some(brokers) = &settings.brokers {
        return Ok(brokers.clone());
    }
    let demo_stop = Stop::new();
    let (topics, rate, signal) = (
        settings.topics.clone(),
        settings.demo_rate,
        demo_stop.clone(),
    );
    let (bootstrap, handle) = blocking(move || demo::start(topics, rate, signal)).await?;
    parts.thread(
        "demo",
        Stage::Demo,
        Signal::Flag(demo_stop),
        Report::Always,
        move || {
            handle
                .join()
                .unwrap_or_else(|_| Err(anyhow!("the demo thread panicked")))
        },
    )?;
    warn!(
        brokers = %bootstrap,
        "DEMO MODE: embedded in-process broker with generated traffic; pass --brokers to count real logs"
    );
    Ok(bootstrap)
}

/// The Kafka clients ingest and the committers use, and the cluster view
/// the monitor keeps.
pub struct KafkaClients {
    pub consumer: Arc<KafkaConsumer>,
    pub group_client: Arc<KafkaConsumer>,
    pub view: ViewReceiver,
}

/// Creates the Kafka clients and starts the monitor (partitions,
/// watermarks, newest timestamps), stopped by `stop`.
pub fn kafka_clients(
    settings: &Settings,
    brokers: &str,
    shared: &Sources,
    parts: &Parts,
    stop: &Stop,
    cluster: Option<&ClusterParts>,
) -> anyhow::Result<KafkaClients> {
    let auto_reset = match settings.offset_reset {
        OffsetReset::Earliest => "earliest",
        OffsetReset::Latest => "latest",
        OffsetReset::Fail => "error",
    };
    let config = consumer_config(brokers, &settings.group, auto_reset, &settings.kafka_config);
    let logs = Arc::new(LogLimit::default());
    let client = |role: &str| -> anyhow::Result<KafkaConsumer> {
        ClientConfig::clone(&config)
            .set("client.id", format!("ipstats-{role}"))
            .create_with_context(KafkaContext {
                health: shared.health.clone(),
                metrics: shared.metrics.clone(),
                logs: logs.clone(),
                rebalances: None,
            })
            .with_context(|| format!("creating the Kafka {role} client"))
    };
    let (consumer, group_client) = match cluster {
        None => (Arc::new(client("ingest")?), Arc::new(client("committer")?)),
        Some(c) => {
            // A member of the group: only it may commit the group's offsets.
            let mut member = cluster_config(&config, &c.settings.instance_id);
            for (key, value) in &settings.kafka_config {
                member.set(key, value);
            }
            let consumer: Arc<KafkaConsumer> = Arc::new(
                member
                    .create_with_context(KafkaContext {
                        health: shared.health.clone(),
                        metrics: shared.metrics.clone(),
                        logs: logs.clone(),
                        rebalances: Some(c.rebalances.clone()),
                    })
                    .context("creating the Kafka ingest client")?,
            );
            (consumer.clone(), consumer)
        }
    };
    let (view_tx, view) = watch::channel(Arc::new(ClusterView::default()));
    let clients = MonitorClients {
        monitor: client("monitor")?,
        tail: client("tail")?,
        idle: vec![group_client.clone()],
    };
    let (topics, health, stop) = (settings.topics.clone(), shared.health.clone(), stop.clone());
    parts.thread(
        "monitor",
        Stage::Consume,
        Signal::Flag(stop.clone()),
        Report::Always,
        move || {
            run_monitor(clients, topics, MONITOR_INTERVAL, view_tx, health, stop);
            Ok(())
        },
    )?;
    Ok(KafkaClients {
        consumer,
        group_client,
        view,
    })
}

/// The answers HTTP asks, and their query workers: threads of their own,
/// stopped with the server.
/// The group member's configuration: the classic protocol with
/// cooperative-sticky assignment (the session timeout is then the
/// client's to set), and this instance's id in the group's listings.
fn cluster_config(config: &ClientConfig, instance_id: &str) -> ClientConfig {
    let mut member = config.clone();
    member
        .set("client.id", format!("ipstats-{instance_id}"))
        .set("group.protocol", "classic")
        .set("partition.assignment.strategy", "cooperative-sticky");
    member
}

pub fn answers(shared: &Sources, parts: &Parts) -> anyhow::Result<Answers> {
    let stop = Stop::new();
    let (pool, workers) = Pool::new(answers::WORKERS.len(), &stop);
    for (name, worker) in answers::WORKERS.into_iter().zip(workers) {
        parts.thread(
            name,
            Stage::Serve,
            Signal::Flag(stop.clone()),
            Report::Always,
            move || {
                worker.run();
                Ok(())
            },
        )?;
    }
    Ok(Answers::new(shared.published.clone(), pool))
}

/// Facts about the service that HTTP shows and that do not change.
pub fn service_info(
    settings: &Settings,
    brokers: &str,
    zookeeper: Option<&ZkOptions>,
) -> ServiceInfo {
    ServiceInfo {
        checkpoint_dir: settings.checkpoint_dir.display().to_string(),
        group: settings.group.clone(),
        topics: settings.topics.clone(),
        brokers: if settings.is_demo() {
            format!("embedded demo ({brokers})")
        } else {
            brokers.to_string()
        },
        zookeeper: zookeeper.map(ZkOptions::display),
        batch: settings.batch,
        retention: settings.retention,
        time_source: settings.time.source.as_str(),
        time_field: settings.time.parsed_field().map(str::to_string),
        lateness: settings.time.lateness,
    }
}

/// Serves HTTP on `listener` from here on: health and status answer while
/// start-up resolves.
pub fn serve_http(
    settings: &Settings,
    info: ServiceInfo,
    shared: &Sources,
    parts: &Parts,
    (listener, connections): (TcpListener, ConnectionLimits),
    cluster: Option<(&ClusterParts, ViewReceiver)>,
) -> anyhow::Result<Option<Arc<Fanout>>> {
    let cancel = CancellationToken::new();
    let answers = answers(shared, parts)?;
    let fanout = match cluster {
        None => None,
        Some((c, view)) => Some(Arc::new(Fanout::new(
            Shared {
                cluster: c.settings.clone(),
                ownership: c.ownership.clone(),
                members: c.members.clone(),
                leader: c.leader.clone(),
                token: settings.auth_token.as_ref().map(|t| t.expose().to_string()),
                slide: settings.slide,
            },
            answers.clone(),
            view,
        )?)),
    };
    let state = AppState::from(AppData {
        bouncer_keys: settings.bouncer_keys.clone().map(Arc::new),
        decisions: settings
            .bouncer_keys
            .as_ref()
            .map(|_| Arc::new(crate::decisions::Decisions::open(&settings.checkpoint_dir))),
        cluster: fanout.clone(),
        answers,
        renders: Default::default(),
        sources: shared.clone(),
        adhoc: Default::default(),
        streams: Arc::new(Streams::new(settings.max_event_streams, cancel.clone())),
        access: Arc::new(Access::new(
            settings.auth_token.as_ref().map(Secret::expose),
            settings.metrics_without_auth,
            settings.allowed_hosts.clone(),
        )),
        info: Arc::new(info),
    });
    parts.task(
        "HTTP server",
        Stage::Serve,
        Signal::Token(cancel.clone()),
        Report::Always,
        Some(HTTP_PATIENCE),
        serve(listener, router(state), connections, cancel)
            .map(|served| served.context("the HTTP server failed")),
    );
    Ok(fanout)
}

/// The progress line, silent from the moment the stop begins: a line after
/// "ingest stopped" would describe nothing that still moves.
pub fn progress(shared: &Sources, parts: &Parts) {
    let quiet = CancellationToken::new();
    let progress = console::report_progress(shared.published.clone(), quiet.clone());
    parts.task(
        "progress",
        Stage::Consume,
        Signal::Token(quiet),
        Report::FailuresOnly,
        None,
        async move {
            progress.await;
            Ok(())
        },
    );
}

/// The alert receivers' sending loops, each a part of the supervisor (they
/// end when the Serve stage stops); the evaluator's end of their queues.
pub fn delivery(settings: &Settings, shared: &Sources, parts: &Parts) -> Option<Outbox> {
    let cancel = CancellationToken::new();
    let targets = Targets {
        webhook: settings.alert_webhook.clone(),
        alertmanager: settings.alertmanager.clone(),
        max_age: settings.alert_max_age,
        queue: settings.alert_queue,
    };
    let delivery = deliver::start(&targets, shared.published.clone(), &shared.metrics, &cancel)?;
    for (name, sender) in delivery.senders {
        parts.task(
            name,
            Stage::Serve,
            Signal::Token(cancel.clone()),
            Report::FailuresOnly,
            None,
            async move {
                sender.await;
                Ok(())
            },
        );
    }
    Some(delivery.outbox)
}

/// Start-up proper: restore the checkpoint; with ZooKeeper, connect, claim
/// the partitions and read the stored offsets; then launch ingest, the
/// checkpoint writer and the committers.
pub fn startup(startup: Startup, parts: &Parts) {
    let (cancel, launcher) = (CancellationToken::new(), parts.clone());
    parts.task(
        "startup",
        Stage::Startup,
        Signal::Token(cancel.clone()),
        Report::FailuresOnly,
        None,
        async move {
            match startup.resolve(cancel).await? {
                Some(ready) => ready.launch(&launcher),
                None => Ok(()),
            }
        },
    );
}
