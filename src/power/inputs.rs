//! Per-node inputs kept fresh: one task per (node, input) refreshes its value on the input's
//! own interval, with a timeout, into an `InputCell`. Readers get the value, its age, or why
//! there is none; past `staleAfter` an input counts as missing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Client;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::http;
use super::sources::{self, CpuCounters, RedfishVendor};
use crate::model::node::{BasicAuth, Input, Quantity, Source, Timing};
use crate::model::published::Board;

/// A published value older than this is not taken as a new reading (its publisher stopped).
const PUBLISHED_FRESH: Duration = Duration::from_secs(30);
use crate::model::url::HttpUrl;

/// What an input reads as now.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// A value from the last refresh (or a static one).
    Fresh(f64),
    /// The last good value; refreshes have failed since.
    Last {
        value: f64,
        age: Duration,
        error: String,
    },
    /// No usable value: never fetched, or older than `staleAfter`.
    Missing { reason: String },
}

#[derive(Debug, Default)]
pub struct InputCell {
    state: Mutex<CellState>,
}

#[derive(Debug, Default)]
struct CellState {
    last: Option<(f64, Instant)>,
    error: Option<String>,
}

impl InputCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, CellState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn store(&self, value: f64, at: Instant) {
        let mut s = self.lock();
        s.last = Some((value, at));
        s.error = None;
    }

    pub fn fail(&self, error: String) {
        self.lock().error = Some(error);
    }

    pub fn read(&self, now: Instant, timing: &Timing) -> Reading {
        let s = self.lock();
        match (&s.last, &s.error) {
            (None, None) => Reading::Missing {
                reason: "no value yet".into(),
            },
            (None, Some(e)) => Reading::Missing { reason: e.clone() },
            (Some((v, at)), error) => {
                let age = now.saturating_duration_since(*at);
                if age > timing.stale_after {
                    Reading::Missing {
                        reason: format!(
                            "last value {}s old (limit {}s)",
                            age.as_secs(),
                            timing.stale_after.as_secs()
                        ),
                    }
                } else if let Some(e) = error {
                    Reading::Last {
                        value: *v,
                        age,
                        error: e.clone(),
                    }
                } else {
                    Reading::Fresh(*v)
                }
            }
        }
    }
}

/// Starts refreshing `input` into a new cell until `stop`; a static input is stored once.
pub fn spawn(
    input: &Input,
    quantity: Quantity,
    client: Client,
    board: Board,
    stop: CancellationToken,
) -> Arc<InputCell> {
    let cell = Arc::new(InputCell::default());
    if let Source::Static(v) = input.source {
        cell.store(v, Instant::now());
        // A static value never ages: refresh it forever at no cost.
        let (c, timing) = (cell.clone(), input.timing);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(timing.interval) => c.store(v, Instant::now()),
                    _ = stop.cancelled() => return,
                }
            }
        });
        return cell;
    }
    let mut collector = Collector {
        source: input.source.clone(),
        quantity,
        client,
        previous_cpu: None,
        vendor: None,
        timeout: input.timing.timeout,
        board,
    };
    let (c, timing) = (cell.clone(), input.timing);
    tokio::spawn(async move {
        loop {
            let result = match tokio::time::timeout(timing.timeout, collector.fetch()).await {
                Ok(r) => r,
                Err(_) => Err(format!("timed out after {}ms", timing.timeout.as_millis())),
            };
            let (lo, hi) = quantity.range();
            match result {
                Ok(Some(v)) if v.is_finite() && (lo..=hi).contains(&v) => {
                    c.store(v, Instant::now())
                }
                Ok(Some(v)) => c.fail(format!("implausible value {v}")),
                // A first CPU scrape only sets the baseline; take the second soon.
                Ok(None) => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.cancelled() => return,
                    }
                }
                Err(e) => c.fail(e),
            }
            tokio::select! {
                _ = tokio::time::sleep(timing.interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    });
    cell
}

struct Collector {
    source: Source,
    quantity: Quantity,
    client: Client,
    previous_cpu: Option<CpuCounters>,
    vendor: Option<RedfishVendor>,
    timeout: Duration,
    board: Board,
}

impl Collector {
    /// One refresh: a value, None when a baseline was taken, or an error.
    async fn fetch(&mut self) -> Result<Option<f64>, String> {
        match self.source.clone() {
            Source::Static(v) => Ok(Some(v)),
            Source::NodeExporter { url } => {
                let now = sources::node_exporter_cpu(&self.text(&url, None).await?)?;
                let before = self.previous_cpu.replace(now);
                match before {
                    Some(b) => sources::cpu_percent(b, now).map(Some),
                    None => Ok(None),
                }
            }
            Source::IpmiExporter { url } => {
                sources::ipmi_ambient(&self.text(&url, None).await?).map(Some)
            }
            Source::Dpapi { url, node } => {
                let doc = self
                    .json(&url.join(&format!("/api/sensor/by_nodename/{node}")), None)
                    .await?;
                sources::dpapi_pressure(&doc).map(Some)
            }
            Source::Redfish { url, auth, .. } => self.redfish(&url, auth.as_ref()).await.map(Some),
            Source::Published { key } => match self.board.read(&key) {
                Some((v, age)) if age <= PUBLISHED_FRESH => Ok(Some(v)),
                Some((_, age)) => Err(format!("not published for {}s", age.as_secs())),
                None => Err("not published (yet)".into()),
            },
        }
        .map_err(|e| format!("{}: {e}", self.quantity.label()))
    }

    /// Tries the vendor that answered last; if none did yet (or it stopped), tries all three
    /// at once and keeps the first that answers.
    async fn redfish(&mut self, url: &HttpUrl, auth: Option<&BasicAuth>) -> Result<f64, String> {
        if let Some(v) = self.vendor {
            match self
                .json(&url.join(v.path()), auth)
                .await
                .and_then(|d| v.parse(&d))
            {
                Ok(t) => return Ok(t),
                Err(_) => self.vendor = None,
            }
        }
        let [a, b, c] = RedfishVendor::ALL;
        let urls = RedfishVendor::ALL.map(|v| url.join(v.path()));
        let (ra, rb, rc) = tokio::join!(
            self.json(&urls[0], auth),
            self.json(&urls[1], auth),
            self.json(&urls[2], auth),
        );
        let mut errors = Vec::new();
        for (vendor, doc) in [(a, ra), (b, rb), (c, rc)] {
            match doc.and_then(|d| vendor.parse(&d)) {
                Ok(t) => {
                    self.vendor = Some(vendor);
                    return Ok(t);
                }
                Err(e) => errors.push(format!("{vendor:?}: {e}")),
            }
        }
        Err(format!(
            "no Redfish vendor path answered ({})",
            errors.join("; ")
        ))
    }

    async fn text(&self, url: &HttpUrl, auth: Option<&BasicAuth>) -> Result<String, String> {
        let body = http::get(&self.client, url, auth, self.timeout).await?;
        String::from_utf8(body).map_err(|_| format!("GET {url}: the answer is not UTF-8"))
    }

    async fn json(
        &self,
        url: &HttpUrl,
        auth: Option<&BasicAuth>,
    ) -> Result<serde_json::Value, String> {
        http::get_json(&self.client, url, auth, self.timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness() {
        let timing = Timing {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            stale_after: Duration::from_secs(60),
        };
        let cell = InputCell::default();
        let t0 = Instant::now();
        assert!(matches!(cell.read(t0, &timing), Reading::Missing { .. }));
        cell.store(42.0, t0);
        assert_eq!(
            cell.read(t0 + Duration::from_secs(3), &timing),
            Reading::Fresh(42.0)
        );
        cell.fail("down".into());
        let r = cell.read(t0 + Duration::from_secs(12), &timing);
        assert!(
            matches!(r, Reading::Last { value, age, .. } if value == 42.0 && age.as_secs() == 12),
            "{r:?}"
        );
        assert!(matches!(
            cell.read(t0 + Duration::from_secs(61), &timing),
            Reading::Missing { .. }
        ));
    }
}
