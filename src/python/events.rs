//! A hub's built-in Event Hub-compatible endpoint for Python: the core's AMQP reader
//! (`service::events`) behind an awaitable stream and a blocking read of what is retained.
//! Only converts: start positions and events cross as typed values.

use std::collections::BTreeMap;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::sync::Mutex;

use crate::error::Error;
use crate::protocol::event_hubs::StartPosition;
use crate::service::events::{EventHubConnectionString, EventStream, ReceivedEvent};

/// One event as the endpoint delivered it.
#[pyclass(frozen, module = "dpskit._native")]
pub(crate) struct EventRecord {
    event: ReceivedEvent,
}

#[pymethods]
impl EventRecord {
    /// The partition it was read from.
    #[getter]
    fn partition(&self) -> &str {
        &self.event.partition
    }
    /// Its sequence number in the partition.
    #[getter]
    fn sequence_number(&self) -> i64 {
        self.event.sequence_number
    }
    /// Its offset in the partition.
    #[getter]
    fn offset(&self) -> &str {
        &self.event.offset
    }
    /// When the partition received it, Unix milliseconds.
    #[getter]
    fn enqueued_time_ms(&self) -> i64 {
        self.event.enqueued_time_ms
    }
    /// The device that sent it.
    #[getter]
    fn device_id(&self) -> Option<&str> {
        self.event.device_id.as_deref()
    }
    /// The module that sent it, if one did.
    #[getter]
    fn module_id(&self) -> Option<&str> {
        self.event.module_id.as_deref()
    }
    /// The body as sent.
    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.event.body)
    }
    /// The device's application properties.
    #[getter]
    fn properties(&self) -> BTreeMap<String, String> {
        self.event.properties.clone()
    }
    /// Every other annotation (IoT Hub's `iothub-*`), as text.
    #[getter]
    fn annotations(&self) -> BTreeMap<String, String> {
        self.event.annotations.clone()
    }
    /// The message id, if given.
    #[getter]
    fn message_id(&self) -> Option<&str> {
        self.event.message_id.as_deref()
    }
    /// The correlation id, if given.
    #[getter]
    fn correlation_id(&self) -> Option<&str> {
        self.event.correlation_id.as_deref()
    }
    /// The content type, if given.
    #[getter]
    fn content_type(&self) -> Option<&str> {
        self.event.content_type.as_deref()
    }
    /// The content encoding, if given.
    #[getter]
    fn content_encoding(&self) -> Option<&str> {
        self.event.content_encoding.as_deref()
    }

    fn __repr__(&self) -> String {
        format!(
            "EventRecord(partition={:?}, sequence_number={}, device_id={:?}, {} bytes)",
            self.event.partition,
            self.event.sequence_number,
            self.event.device_id,
            self.event.body.len()
        )
    }
}

/// Events of an event hub's partitions as they arrive.
#[pyclass(frozen, module = "dpskit._native")]
pub(crate) struct EventHubStream {
    stream: Arc<Mutex<Option<EventStream>>>,
}

#[pymethods]
impl EventHubStream {
    /// Resolves to the next events, at most `max` (waits for one, then takes what has
    /// arrived; empty once the stream has ended or was closed): one await for many events.
    #[pyo3(signature = (max = 300))]
    fn next_batch<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyAny>> {
        let stream = self.stream.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let mut guard = stream.lock().await;
            let Some(open) = guard.as_mut() else {
                return Ok(Vec::new());
            };
            match open.next_batch(max.max(1)).await {
                Ok(batch) if batch.is_empty() => {
                    *guard = None;
                    Ok(Vec::new())
                }
                Ok(batch) => Ok(batch
                    .into_iter()
                    .map(|event| EventRecord { event })
                    .collect()),
                Err(e) => {
                    *guard = None;
                    Err(e.into())
                }
            }
        })
    }

    /// Closes the connection (what is buffered is dropped).
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stream = self.stream.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            stream.lock().await.take();
            Ok(())
        })
    }
}

/// A start position from its kind and value: `offset` (text: `-1` the start, `@latest` the
/// end), `sequence_number` (an integer) or `enqueued_time` (Unix milliseconds).
fn start_position(kind: &str, value: &str, inclusive: bool) -> PyResult<StartPosition> {
    let number = || {
        value.parse::<i64>().map_err(|_| {
            Error::config(format!(
                "a {kind} start position is a number, not {value:?}"
            ))
        })
    };
    Ok(match kind {
        "offset" => StartPosition::Offset {
            offset: value.to_string(),
            inclusive,
        },
        "sequence_number" => StartPosition::SequenceNumber {
            sequence_number: number()?,
            inclusive,
        },
        "enqueued_time" => StartPosition::EnqueuedTime {
            unix_ms: number()?,
            inclusive,
        },
        other => {
            return Err(Error::config(format!(
                "a start position is an offset, a sequence_number or an enqueued_time, not {other:?}"
            ))
            .into());
        }
    })
}

/// Resolves to an [`EventHubStream`] of `partitions` (all when `None`) of `consumer_group`,
/// each from the start position (`kind`, `value`, `inclusive`).
#[pyfunction]
#[pyo3(signature = (connection_string, port, trust_pem, consumer_group, kind, value, inclusive = false, partitions = None))]
#[allow(clippy::too_many_arguments)]
fn open_event_stream<'py>(
    py: Python<'py>,
    connection_string: &str,
    port: Option<u16>,
    trust_pem: Option<&str>,
    consumer_group: String,
    kind: &str,
    value: &str,
    inclusive: bool,
    partitions: Option<Vec<String>>,
) -> PyResult<Bound<'py, PyAny>> {
    let target = EventHubConnectionString::parse(connection_string)?;
    let trust = super::trust(trust_pem)?;
    let start = start_position(kind, value, inclusive)?;
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        let stream =
            EventStream::open(&target, port, &trust, &consumer_group, &start, partitions).await?;
        Ok(EventHubStream {
            stream: Arc::new(Mutex::new(Some(stream))),
        })
    })
}

/// Every retained event, read through `consumer_group` up to what each partition held when
/// the read began, in enqueued order (blocks; the GIL is released).
#[pyfunction]
#[pyo3(signature = (connection_string, port, trust_pem, consumer_group = "$Default".to_string()), text_signature = "(connection_string, port, trust_pem, consumer_group='$Default')")]
fn read_retained_events(
    py: Python<'_>,
    connection_string: &str,
    port: Option<u16>,
    trust_pem: Option<&str>,
    consumer_group: String,
) -> PyResult<Vec<EventRecord>> {
    let target = EventHubConnectionString::parse(connection_string)?;
    let trust = super::trust(trust_pem)?;
    let runtime = pyo3_async_runtimes::tokio::get_runtime();
    let events = super::block_on_interruptible(py, runtime.handle(), async move {
        crate::service::events::read_retained(&target, port, &trust, &consumer_group).await
    })??;
    Ok(events
        .into_iter()
        .map(|event| EventRecord { event })
        .collect())
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<EventRecord>()?;
    m.add_class::<EventHubStream>()?;
    m.add_function(wrap_pyfunction!(open_event_stream, m)?)?;
    m.add_function(wrap_pyfunction!(read_retained_events, m)?)?;
    Ok(())
}
