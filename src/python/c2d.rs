//! A back end's cloud-to-device messages for Python (`dpskit.cloud.hub`): the core's AMQP
//! sender and feedback receiver (`service::c2d`) behind a blocking sender, an awaitable
//! feedback stream and a blocking wait for one message's feedback. Only converts: messages go
//! in as their fields, feedback comes out as `C2dFeedbackRecord`s.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use tokio::sync::Mutex;

use crate::service::c2d::{C2dClient, C2dFeedback, C2dMessage, FeedbackReceiver};

/// One outcome IoT Hub reported for a cloud-to-device message.
#[pyclass(frozen, module = "dpskit._native")]
pub(crate) struct C2dFeedbackRecord {
    feedback: C2dFeedback,
}

#[pymethods]
impl C2dFeedbackRecord {
    /// The id of the message it is about.
    #[getter]
    fn original_message_id(&self) -> &str {
        &self.feedback.original_message_id
    }
    /// The device the message was for.
    #[getter]
    fn device_id(&self) -> &str {
        &self.feedback.device_id
    }
    /// The outcome (`Success`, `Expired`, `DeliveryCountExceeded`, `Rejected`, `Purged`).
    #[getter]
    fn status(&self) -> &str {
        &self.feedback.status
    }
    /// The outcome in words.
    #[getter]
    fn description(&self) -> &str {
        &self.feedback.description
    }
    /// When it happened, Unix milliseconds.
    #[getter]
    fn enqueued_time_ms(&self) -> i64 {
        self.feedback.enqueued_time_ms
    }
    /// The generation of the device's identity.
    #[getter]
    fn device_generation_id(&self) -> &str {
        &self.feedback.device_generation_id
    }

    fn __repr__(&self) -> String {
        format!(
            "C2dFeedbackRecord(original_message_id={:?}, device_id={:?}, status={:?})",
            self.feedback.original_message_id, self.feedback.device_id, self.feedback.status
        )
    }
}

fn records(feedback: Vec<C2dFeedback>) -> Vec<C2dFeedbackRecord> {
    feedback
        .into_iter()
        .map(|feedback| C2dFeedbackRecord { feedback })
        .collect()
}

/// A hub's cloud-to-device sender: one AMQP connection, opened on the first send.
#[pyclass(frozen, module = "dpskit._native")]
pub(crate) struct C2dSender {
    client: Arc<C2dClient>,
}

#[pymethods]
impl C2dSender {
    /// A sender to the hub a service connection string names, on its AMQP `port` (5671 when
    /// `None`), TLS checked against `trust_pem` (the system roots when `None`).
    #[new]
    fn new(connection_string: &str, port: Option<u16>, trust_pem: Option<&str>) -> PyResult<Self> {
        let trust = super::trust(trust_pem)?;
        Ok(C2dSender {
            client: Arc::new(C2dClient::from_connection_string(
                connection_string,
                port,
                &trust,
            )?),
        })
    }

    /// Sends a message and waits for the hub to take it; returns its message id (blocks;
    /// the GIL is released).
    #[pyo3(signature = (device_id, body, properties, ack = None, expires_in = None, message_id = None, correlation_id = None, content_type = None, content_encoding = None))]
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        py: Python<'_>,
        device_id: String,
        body: Vec<u8>,
        properties: Vec<(String, String)>,
        ack: Option<String>,
        expires_in: Option<f64>,
        message_id: Option<String>,
        correlation_id: Option<String>,
        content_type: Option<String>,
        content_encoding: Option<String>,
    ) -> PyResult<String> {
        let expires_in = expires_in
            .map(|seconds| crate::error::positive_seconds("expires_in", seconds))
            .transpose()?;
        let message = C2dMessage {
            device_id,
            body,
            properties,
            ack,
            expires_in,
            message_id,
            correlation_id,
            content_type,
            content_encoding,
        };
        let client = self.client.clone();
        let runtime = pyo3_async_runtimes::tokio::get_runtime();
        Ok(super::block_on_interruptible(
            py,
            runtime.handle(),
            async move { client.send(&message).await },
        )??)
    }

    /// Closes the connection (the next send opens another).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let client = self.client.clone();
        let runtime = pyo3_async_runtimes::tokio::get_runtime();
        super::block_on_interruptible(py, runtime.handle(), async move {
            client.close().await;
        })?;
        Ok(())
    }
}

/// A hub's delivery feedback as it arrives.
#[pyclass(frozen, module = "dpskit._native")]
pub(crate) struct C2dFeedbackStream {
    receiver: Arc<Mutex<Option<FeedbackReceiver>>>,
}

#[pymethods]
impl C2dFeedbackStream {
    /// Resolves to the records of the next feedback message (`[]` once closed); each message
    /// is accepted after its records read, one that does not read raises `ProtocolError`.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let receiver = self.receiver.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let mut guard = receiver.lock().await;
            let Some(open) = guard.as_mut() else {
                return Ok(Vec::new());
            };
            match open.next().await {
                Ok(feedback) => Ok(records(feedback)),
                Err(e) => {
                    if let Some(open) = guard.take() {
                        open.close().await;
                    }
                    Err(e.into())
                }
            }
        })
    }

    /// Detaches and closes the connection.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let receiver = self.receiver.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            if let Some(open) = receiver.lock().await.take() {
                open.close().await;
            }
            Ok(())
        })
    }
}

/// Resolves to a [`C2dFeedbackStream`] of the hub a service connection string names.
#[pyfunction]
fn open_feedback_stream<'py>(
    py: Python<'py>,
    connection_string: String,
    port: Option<u16>,
    trust_pem: Option<&str>,
) -> PyResult<Bound<'py, PyAny>> {
    let trust = super::trust(trust_pem)?;
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        let receiver = FeedbackReceiver::open(&connection_string, port, &trust).await?;
        Ok(C2dFeedbackStream {
            receiver: Arc::new(Mutex::new(Some(receiver))),
        })
    })
}

/// Reads the hub's feedback until a record about `message_id` arrives, for at most `timeout`
/// seconds: `(record, other records read meanwhile)` (blocks; the GIL is released). None in
/// time raises `OperationTimeoutError`.
#[pyfunction]
fn wait_for_feedback(
    py: Python<'_>,
    connection_string: String,
    port: Option<u16>,
    trust_pem: Option<&str>,
    message_id: String,
    timeout: f64,
) -> PyResult<(C2dFeedbackRecord, Vec<C2dFeedbackRecord>)> {
    let trust = super::trust(trust_pem)?;
    let timeout: Duration = crate::error::positive_seconds("timeout", timeout)?;
    let runtime = pyo3_async_runtimes::tokio::get_runtime();
    let (found, others) = super::block_on_interruptible(py, runtime.handle(), async move {
        let mut receiver = FeedbackReceiver::open(&connection_string, port, &trust).await?;
        let found = receiver.wait_for(&message_id, timeout).await;
        receiver.close().await;
        found
    })??;
    Ok((C2dFeedbackRecord { feedback: found }, records(others)))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<C2dFeedbackRecord>()?;
    m.add_class::<C2dSender>()?;
    m.add_class::<C2dFeedbackStream>()?;
    m.add_function(wrap_pyfunction!(open_feedback_stream, m)?)?;
    m.add_function(wrap_pyfunction!(wait_for_feedback, m)?)?;
    Ok(())
}
