//! Many simulated devices on one runtime: connect a set of devices to their hubs with bounded
//! concurrency, keep them connected, and drive telemetry through all of them at once. Every
//! device is one task holding one MQTT connection; there is no thread per device.

pub(crate) mod plan;

pub(crate) mod engine;

pub use engine::{
    CustomFields, DeviceReport, FleetCredentials, FleetDevice, FleetProgress, FleetResult,
    FleetSettings, MessageColumns, Outcome, custom_fields, fleet_devices, run,
};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::Error;
use crate::hub::{HubClient, HubConnectOptions, PendingAck, TelemetryMessage};
use crate::transport::Trust;
use crate::transport::bounded::spawn_bounded;

/// What happened when a set of devices connected.
#[derive(Debug, Default)]
pub struct ConnectReport {
    /// Devices that got a CONNACK.
    pub connected: usize,
    /// Devices that did not, with why (in input order).
    pub failures: Vec<(String, Error)>,
    /// Wall time of the whole phase.
    pub elapsed: Duration,
    /// Per connected device: TLS handshake through CONNACK, sorted ascending.
    pub latencies: Vec<Duration>,
}

/// What happened when telemetry was sent through every connected device.
#[derive(Debug, Default)]
pub struct SendReport {
    /// Messages handed to the connections.
    pub sent: u64,
    /// Messages the hub acknowledged (PUBACK).
    pub acknowledged: u64,
    /// Devices whose stream stopped early, with why.
    pub failures: Vec<(String, Error)>,
    /// Wall time from the first publish to the last acknowledgement.
    pub elapsed: Duration,
}

/// Devices connected to their hubs, held open until [`HubConnections::close`].
#[derive(Debug, Default)]
pub struct HubConnections {
    clients: Vec<Arc<HubClient>>,
}

impl HubConnections {
    /// Connects every device, at most `concurrency` handshakes at a time. Devices that fail
    /// are reported, not retried: the report says exactly what the hub or network did.
    pub async fn connect(
        devices: Vec<HubConnectOptions>,
        trust: &Trust,
        concurrency: usize,
    ) -> (HubConnections, ConnectReport) {
        let start = Instant::now();
        let tasks = spawn_bounded(devices, concurrency, |options| {
            let trust = trust.clone();
            async move {
                let id = options.device_id.clone();
                let begun = Instant::now();
                let result = HubClient::connect(options, &trust).await;
                (id, result, begun.elapsed())
            }
        })
        .await;
        let mut connections = HubConnections::default();
        let mut report = ConnectReport::default();
        for task in tasks {
            match task {
                Ok((_, Ok(client), took)) => {
                    connections.clients.push(Arc::new(client));
                    report.latencies.push(took);
                }
                Ok((id, Err(error), _)) => report.failures.push((id, error)),
                Err(join) => report.failures.push((
                    "?".into(),
                    Error::transport_caused("connect task failed", join),
                )),
            }
        }
        report.connected = connections.clients.len();
        report.latencies.sort_unstable();
        report.elapsed = start.elapsed();
        (connections, report)
    }

    /// Takes over the devices of `other` (e.g. connected to another hub).
    pub fn absorb(&mut self, other: HubConnections) {
        self.clients.extend(other.clients);
    }

    /// Connected devices.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True when no device is connected.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Sends `per_device` messages with `body` from every device concurrently, each device
    /// keeping up to `window` messages unacknowledged, and waits for every PUBACK.
    pub async fn send_telemetry(&self, per_device: u64, body: Bytes, window: usize) -> SendReport {
        let start = Instant::now();
        let sent = Arc::new(AtomicU64::new(0));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let window = window.max(1);
        let mut tasks = Vec::with_capacity(self.clients.len());
        for client in &self.clients {
            let client = client.clone();
            let message = TelemetryMessage::new(body.clone());
            let (sent, acknowledged) = (sent.clone(), acknowledged.clone());
            tasks.push(tokio::spawn(async move {
                let mut pending: std::collections::VecDeque<PendingAck> =
                    std::collections::VecDeque::with_capacity(window);
                for _ in 0..per_device {
                    if pending.len() == window {
                        // PUBACKs come back in order, so the oldest is the next to wait for.
                        if let Some(oldest) = pending.pop_front() {
                            oldest.acknowledged().await?;
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    pending.push_back(client.queue_telemetry(&message).await?);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                for ack in pending {
                    ack.acknowledged().await?;
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), Error>(())
            }));
        }
        let mut report = SendReport::default();
        for (task, client) in tasks.into_iter().zip(&self.clients) {
            let outcome = task
                .await
                .unwrap_or_else(|e| Err(Error::transport_caused("send task failed", e)));
            if let Err(error) = outcome {
                report
                    .failures
                    .push((client.device_id().to_string(), error));
            }
        }
        report.sent = sent.load(Ordering::Relaxed);
        report.acknowledged = acknowledged.load(Ordering::Relaxed);
        report.elapsed = start.elapsed();
        report
    }

    /// Disconnects every device cleanly.
    pub async fn close(self) {
        let mut tasks = Vec::with_capacity(self.clients.len());
        for client in self.clients {
            tasks.push(tokio::spawn(async move {
                if let Ok(client) = Arc::try_unwrap(client) {
                    let _ = client.disconnect().await;
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}
