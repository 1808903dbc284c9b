//! The checker: one task per checked (service, backend), kept while its service keeps the
//! backend and the same check settings, and the `HealthTable` they publish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::metrics::HealthMetrics;
use super::probe::{probe, Outcome};
use super::streak::Streak;
use super::{Health, HealthTable};
use crate::model::{HealthCheck, ServiceTable};

type Key = (Arc<str>, SocketAddr);

struct Task {
    check: HealthCheck,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

pub struct Checker {
    tasks: HashMap<Key, Task>,
    table: watch::Sender<Arc<HealthTable>>,
    metrics: HealthMetrics,
}

impl Checker {
    /// A checker with nothing to check yet, and the channel its table is published on.
    pub fn new(metrics: HealthMetrics) -> (Checker, watch::Receiver<Arc<HealthTable>>) {
        let (table, rx) = watch::channel(Arc::new(HealthTable::default()));
        let checker = Checker {
            tasks: HashMap::new(),
            table,
            metrics,
        };
        (checker, rx)
    }

    /// Checks exactly the backends of `services` that have a health check. A check whose
    /// service, backend and settings are unchanged keeps running with its state; a new or
    /// changed one starts over as `Starting`.
    pub fn update(&mut self, services: &ServiceTable) {
        let mut wanted: HashMap<Key, HealthCheck> = HashMap::new();
        for service in services.services.values() {
            if let Some(check) = service.health_check {
                for b in service.all_backends() {
                    wanted.insert((service.key.clone(), b.address), check);
                }
            }
        }
        let stale: Vec<Key> = self
            .tasks
            .iter()
            .filter(|(key, task)| wanted.get(*key) != Some(&task.check))
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            self.stop(&key);
        }
        for (key, check) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let cancel = CancellationToken::new();
            let label = key.1.to_string();
            self.table.send_modify(|t| {
                Arc::make_mut(t)
                    .backends
                    .insert(key.clone(), Health::Starting);
                self.metrics.up.with_label_values(&[&key.0, &label]).set(1);
            });
            let handle = tokio::spawn(run(
                key.clone(),
                check,
                self.table.clone(),
                self.metrics.clone(),
                cancel.clone(),
            ));
            self.tasks.insert(
                key,
                Task {
                    check,
                    cancel,
                    handle,
                },
            );
        }
    }

    /// Ends the check of `key` and forgets its state and series. The task may be between
    /// two awaits: it publishes only under the table's lock while not cancelled, so nothing
    /// it does can outlive this.
    fn stop(&mut self, key: &Key) {
        let Some(task) = self.tasks.remove(key) else {
            return;
        };
        task.cancel.cancel();
        task.handle.abort();
        self.table.send_modify(|t| {
            Arc::make_mut(t).backends.remove(key);
            self.metrics.forget(&key.0, &key.1.to_string());
        });
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.handle.abort();
        }
    }
}

/// Checks one backend every interval until cancelled, publishing each change of state.
async fn run(
    key: Key,
    check: HealthCheck,
    table: watch::Sender<Arc<HealthTable>>,
    metrics: HealthMetrics,
    cancel: CancellationToken,
) {
    let (service, backend) = (key.0.clone(), key.1);
    let label = backend.to_string();
    let checks = |result: &str| {
        metrics
            .checks
            .with_label_values(&[&service, &label, result])
    };
    let mut state = Health::Starting;
    let mut streak = Streak::default();
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let outcome = probe(backend, check.timeout).await;
        checks(outcome.label()).inc();
        let failure = match &outcome {
            Outcome::Success => None,
            Outcome::Failure(why) => Some(why.as_str()),
            Outcome::Inconclusive(why) => {
                tracing::debug!(%service, %backend, error = %why, "health check could not run");
                continue;
            }
        };
        let Some(new) = streak.observe(&state, failure, check.rise, check.fall) else {
            continue;
        };
        match &new {
            Health::Down(why) => {
                tracing::warn!(%service, %backend, reason = %why, fall = check.fall, "backend down: health check failed")
            }
            _ => {
                tracing::info!(%service, %backend, rise = check.rise, "backend up: health check passed")
            }
        }
        state = new.clone();
        table.send_if_modified(|t| {
            if cancel.is_cancelled() {
                return false;
            }
            metrics
                .up
                .with_label_values(&[&service, &label])
                .set(i64::from(!new.is_down()));
            Arc::make_mut(t).backends.insert(key.clone(), new);
            true
        });
    }
}
