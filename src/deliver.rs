//! Alert delivery, at the edge: a JSON POST per transition to a webhook,
//! and Prometheus Alertmanager's v2 API. Each receiver has its own bounded
//! queue (the evaluator's end is [`Outbox`]) and its own sending loop,
//! owned by the supervisor: a receiver that fails is retried with backoff,
//! in order, so that one key's transitions arrive as they happened.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc::{Receiver, channel};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::rules::outbox::Outbox;
use crate::rules::{Firing, State, Transition};
use crate::snapshot::Published;
use crate::vocab::rfc3339;

/// How often Alertmanager hears again of what still fires (it resolves an
/// alert it has not heard of for its `resolve_timeout`, 5 min by default).
const RESEND_EVERY: Duration = Duration::from_secs(30);
const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where transitions go.
#[derive(Clone, Debug)]
pub struct Targets {
    pub webhook: Option<reqwest::Url>,
    pub alertmanager: Option<reqwest::Url>,
    pub max_age: Duration,
    /// Transitions waiting per target before new ones are dropped (counted).
    pub queue: usize,
}

impl Targets {
    pub fn any(&self) -> bool {
        self.webhook.is_some() || self.alertmanager.is_some()
    }
}

/// The series of the receivers in use, at zero, so that they exist from
/// the first scrape.
pub fn declare_series(metrics: &Metrics, webhook: bool, alertmanager: bool) {
    let targets = [("webhook", webhook), ("alertmanager", alertmanager)];
    for (target, _) in targets.iter().filter(|(_, used)| *used) {
        for result in ["ok", "retry", "dropped", "stale"] {
            metrics
                .alert_deliveries
                .with_label_values(&[target, result]);
        }
    }
}

/// The evaluator's end of the queues, and a sender per receiver for the
/// supervisor to own (each ends when `cancel` fires or its queue closes).
pub struct Delivery {
    pub outbox: Outbox,
    pub senders: Vec<(&'static str, Sender)>,
}

/// One receiver's sending loop.
pub type Sender = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The queues and the sending loops for `targets` (none when no receiver
/// is set); the loops end when `cancel` fires.
pub fn start(
    targets: &Targets,
    published: Published,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Option<Delivery> {
    if !targets.any() {
        return None;
    }
    let client = match reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("ipstats/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client for alert receivers: alerts are recorded, not sent");
            return None;
        }
    };
    let mut queues = Vec::new();
    let mut senders: Vec<(&'static str, Sender)> = Vec::new();
    if let Some(url) = targets.webhook.clone() {
        let (tx, rx) = channel(targets.queue.max(1));
        queues.push(("webhook", tx));
        let poster = Poster::new(
            client.clone(),
            url,
            "webhook",
            metrics.clone(),
            cancel.clone(),
        );
        senders.push(("webhook sender", Box::pin(webhook(poster, rx))));
    }
    if let Some(base) = targets.alertmanager.clone() {
        let (tx, rx) = channel(targets.queue.max(1));
        queues.push(("alertmanager", tx));
        let url = base.join("api/v2/alerts").unwrap_or(base);
        let poster = Poster::new(client, url, "alertmanager", metrics.clone(), cancel.clone());
        senders.push((
            "alertmanager sender",
            Box::pin(alertmanager(poster, rx, published, targets.max_age)),
        ));
    }
    Some(Delivery {
        outbox: Outbox::new(queues, targets.max_age, metrics.clone()),
        senders,
    })
}

/// POSTs JSON to one URL until it is accepted (2xx) or ipstats stops.
struct Poster {
    client: reqwest::Client,
    url: reqwest::Url,
    target: &'static str,
    metrics: Metrics,
    cancel: CancellationToken,
}

impl Poster {
    fn new(
        client: reqwest::Client,
        url: reqwest::Url,
        target: &'static str,
        metrics: Metrics,
        cancel: CancellationToken,
    ) -> Self {
        Poster {
            client,
            url,
            target,
            metrics,
            cancel,
        }
    }

    /// `false` when ipstats stopped first.
    async fn post(&self, body: &impl Serialize) -> bool {
        let mut wait = FIRST_RETRY;
        let mut failures = 0u32;
        loop {
            // A stop does not wait for a receiver that is slow to answer.
            let sent = tokio::select! {
                () = self.cancel.cancelled() => return false,
                sent = self.client.post(self.url.clone()).json(body).send() => sent,
            };
            let error = match sent {
                Ok(response) if response.status().is_success() => {
                    if failures > 0 {
                        info!(target = self.target, url = %self.url, failures, "alert receiver accepts again");
                    }
                    self.metrics
                        .alert_deliveries
                        .with_label_values(&[self.target, "ok"])
                        .inc();
                    return true;
                }
                Ok(response) => format!("answered {}", response.status()),
                Err(e) => e.to_string(),
            };
            failures += 1;
            self.metrics
                .alert_deliveries
                .with_label_values(&[self.target, "retry"])
                .inc();
            if failures == 1 || failures.is_power_of_two() {
                warn!(target = self.target, url = %self.url, %error, failures, "alert not delivered; retrying");
            }
            tokio::select! {
                () = self.cancel.cancelled() => return false,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(LAST_RETRY);
        }
    }
}

async fn webhook(poster: Poster, mut queue: Receiver<Transition>) {
    loop {
        let transition = tokio::select! {
            () = poster.cancel.cancelled() => return,
            next = queue.recv() => match next {
                Some(t) => t,
                None => return,
            },
        };
        if !poster.post(&transition).await {
            return;
        }
    }
}

/// One alert as Alertmanager's v2 API takes it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AmAlert {
    labels: serde_json::Value,
    annotations: serde_json::Value,
    starts_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ends_at: Option<String>,
}

/// What one alert says: the rule, the key and their labels, the count
/// against the threshold.
struct AlertText<'a> {
    rule: &'a str,
    key: &'a str,
    severity: &'a str,
    description: &'a str,
    value: u64,
    /// When a pane of the window is summarized: the most the count may be.
    upper: Option<u64>,
    threshold: u64,
}

impl AlertText<'_> {
    fn am(&self, starts_at: SystemTime, ends_at: Option<SystemTime>) -> AmAlert {
        let mut annotations = json!({
            "description": self.description,
            "value": self.value.to_string(),
            "threshold": self.threshold.to_string(),
        });
        if let Some(upper) = self.upper {
            annotations["upper"] = upper.to_string().into();
        }
        AmAlert {
            labels: json!({"alertname": self.rule, "key": self.key, "severity": self.severity}),
            annotations,
            starts_at: rfc3339(starts_at),
            ends_at: ends_at.map(rfc3339),
        }
    }
}

fn am_transition(t: &Transition) -> AmAlert {
    // Alertmanager keeps an alert until its endsAt by its own clock: never
    // later than now, even when the data's time runs ahead.
    let at = t.at.min(SystemTime::now());
    let text = AlertText {
        rule: &t.rule,
        key: &t.key,
        severity: &t.severity,
        description: &t.description,
        value: t.value,
        upper: t.upper,
        threshold: t.threshold,
    };
    text.am(at, (t.state == State::Resolved).then_some(at))
}

fn am_firing(f: &Firing) -> AmAlert {
    let text = AlertText {
        rule: &f.rule,
        key: &f.key,
        severity: &f.severity,
        description: &f.description,
        value: f.value,
        upper: f.upper,
        threshold: f.threshold,
    };
    text.am(f.since, None)
}

/// Transitions as they come, and every [`RESEND_EVERY`] what fires now
/// (while the data is fresh: a replay does not page anyone).
async fn alertmanager(
    poster: Poster,
    mut queue: Receiver<Transition>,
    published: Published,
    max_age: Duration,
) {
    let mut resend = tokio::time::interval(RESEND_EVERY);
    loop {
        let batch: Vec<AmAlert> = tokio::select! {
            () = poster.cancel.cancelled() => return,
            next = queue.recv() => match next {
                Some(t) => vec![am_transition(&t)],
                None => return,
            },
            _ = resend.tick() => {
                let snapshot = published.load();
                let fresh = SystemTime::now()
                    .duration_since(snapshot.window_end)
                    .unwrap_or_default()
                    <= max_age;
                if !fresh {
                    continue;
                }
                snapshot
                    .alerts
                    .firing
                    .iter()
                    .map(am_firing)
                    .collect()
            }
        };
        if !batch.is_empty() && !poster.post(&batch).await {
            return;
        }
    }
}
