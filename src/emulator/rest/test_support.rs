//! Test helpers for the HTTPS listener: an emulator started for a test, raw HTTPS requests
//! over real TLS with their answers parsed just enough, SAS tokens and ARM paths. Shared by the
//! listener's own tests and `src/interop_tests/`.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::emulator::{Emulator, EmulatorConfig};

/// A guard against a hung server: far beyond any answer the tests wait for.
pub(crate) const HANG_GUARD: Duration = Duration::from_secs(60);

pub(crate) fn start(config: EmulatorConfig) -> Emulator {
    Emulator::start(EmulatorConfig {
        port: 0,
        web_port: 0,
        amqp_port: 0,
        worker_threads: Some(2),
        ..config
    })
    .unwrap()
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An HTTP answer, parsed just enough.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: Value,
}

/// Raw HTTPS to one of the emulator's REST listeners.
pub(crate) struct Client {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) connector: TlsConnector,
    pub(crate) name: ServerName<'static>,
}

impl Client {
    /// To the management port (ARM), named `server_name` in the handshake.
    pub(crate) fn new(emulator: &Emulator, server_name: &str) -> Self {
        Self::to(emulator, "127.0.0.1", emulator.https_port(), server_name)
    }

    /// To port 443 (or its fallback) of a resource's own address: the hub and DPS service APIs.
    pub(crate) fn resource(emulator: &Emulator, host: &str) -> Self {
        Self::to(emulator, host, emulator.web_port(), host)
    }

    fn to(emulator: &Emulator, host: &str, port: u16, server_name: &str) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(
                crate::pki::Certificate::from_pem(emulator.trust_pem().as_bytes())
                    .unwrap()
                    .der()
                    .to_vec(),
            ))
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(crate::transport::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Client {
            host: host.to_string(),
            port,
            connector: TlsConnector::from(Arc::new(config)),
            name: ServerName::try_from(server_name.to_string()).unwrap(),
        }
    }

    pub(crate) async fn connect(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .unwrap();
        self.connector
            .connect(self.name.clone(), tcp)
            .await
            .unwrap()
    }

    /// Sends `request` as is, half-closes, and reads until the server closes: the answer, or
    /// `None` when the server closed without one.
    pub(crate) async fn raw(&self, request: &[u8]) -> Option<Answer> {
        let mut stream = self.connect().await;
        // A server that hangs up early may make the write fail; the read tells what happened.
        let _ = stream.write_all(request).await;
        let _ = stream.shutdown().await;
        read_answer(&mut stream).await
    }

    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(value) = authorization {
            request.push_str(&format!("Authorization: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        self.raw(request.as_bytes())
            .await
            .unwrap_or_else(|| panic!("{method} {path}: closed without an answer"))
    }
}

/// Reads to the end of the stream (bounded by [`HANG_GUARD`]) and parses the answer.
pub(crate) async fn read_answer(stream: &mut TlsStream<TcpStream>) -> Option<Answer> {
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(HANG_GUARD, stream.read_to_end(&mut bytes)).await;
    assert!(read.is_ok(), "the server neither answered nor closed");
    parse_answer(&bytes)
}

pub(crate) fn parse_answer(bytes: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    })
}

pub(crate) fn token(sr: &str, key: &str, policy: &str) -> String {
    crate::sas::build_token(sr, key, crate::pki::issue::now() + 3600, Some(policy)).unwrap()
}

/// [`token`] with its signature left as raw base64 (which the service also takes), so every
/// token is as long as any other and seeded mutations land on the same bytes run after run,
/// whatever the random keys.
pub(crate) fn fixed_length_token(sr: &str, key: &str, policy: &str) -> String {
    let token = token(sr, key, policy);
    let start = token.find("&sig=").unwrap() + 5;
    let end = start + token[start..].find('&').unwrap();
    let raw = crate::sas::url_decode(&token[start..end]).unwrap();
    format!("{}{raw}{}", &token[..start], &token[end..])
}

pub(crate) fn arm_base(subscription: &str, group: &str) -> String {
    format!("/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Devices")
}

pub(crate) fn sas_device(id: &str, host: &str) -> crate::emulator::model::HubDevice {
    crate::emulator::model::HubDevice {
        device_id: id.into(),
        hub: host.into(),
        auth: crate::emulator::model::DeviceAuth::Sas {
            primary_key: crate::sas::generate_key().unwrap(),
            secondary_key: crate::sas::generate_key().unwrap(),
        },
        initial_twin: None,
        created: crate::pki::issue::now(),
        registry: Default::default(),
        issued_by: None,
    }
}
