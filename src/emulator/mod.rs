//! The local cloud: an in-process emulator of Azure DPS and IoT Hub that the official SDKs talk
//! to unchanged. One MQTT-over-TLS listener serves DPS and every hub, routed by the CONNECT
//! username; ARM is served on the management port (`rest`), the DPS and hub service APIs and
//! MQTT over WebSockets on port 443 of each resource's address (`web`); AMQP on 5671 of each
//! hub's address serves its Event Hub-compatible endpoint (`amqp`); state lives in SQLite in
//! the data folder, which only its owner can read (see `secrets`).

pub(crate) mod amqp;
pub(crate) mod cloud;
pub(crate) mod device_registry;
pub(crate) mod dps;
pub(crate) mod feedback;
pub(crate) mod hub;
pub mod loopback;
pub(crate) mod model;
pub(crate) mod quotas;
pub(crate) mod rest;
pub(crate) mod sas_policy;
mod secrets;
pub(crate) mod server;
pub(crate) mod store;
pub(crate) mod tls;
pub(crate) mod trace;
mod web;

#[cfg(test)]
mod fuzz_chain_tests;
#[cfg(test)]
mod listener_fuzz_tests;
#[cfg(test)]
mod loopback_tests;
#[cfg(test)]
mod name_constraints_tests;
#[cfg(test)]
mod secrets_tests;
#[cfg(test)]
mod security_tests;
#[cfg(test)]
pub(crate) mod tests;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

use crate::error::{Error, Result};
pub use amqp::AMQP_PORT;
pub(crate) use cloud::Cloud;
#[cfg(test)]
pub(crate) use cloud::EnrollmentSpec;
pub(crate) use dps::DpsKnobs;
pub(crate) use rest::ThrottledRequests;
pub use server::Limits;

/// How to start the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Where state and the emulator's CA live; a temporary folder (deleted on stop) if `None`.
    pub data_dir: Option<PathBuf>,
    /// Address DPS listens on; hubs take the following loopback addresses, or where those
    /// cannot be bound the names that reach 127.0.0.1 (see [`loopback`]).
    pub host: String,
    /// MQTT port: 8883, because the official Python SDK cannot dial another; 0 picks a free one.
    pub port: u16,
    /// Listener limits.
    pub limits: Limits,
    /// `retry-after` seconds on 202 (assigning) replies. 0 by default: an emulated assignment
    /// is ready at once, and a fleet should be limited by the machine, not by sleeps;
    /// [`AZURE_POLL_RETRY_AFTER`] paces devices as Azure does.
    pub poll_retry_after: u32,
    /// Runtime worker threads (default: one per core).
    pub worker_threads: Option<usize>,
    /// HTTPS port of the management (ARM) and service REST APIs on `host`; 0 picks a free one.
    pub https_port: u16,
    /// Port of HTTPS and MQTT over WebSockets on each resource's own address: 443 as on Azure
    /// (the official SDKs dial it, with no way to name another). Where it cannot be bound (an
    /// unprivileged process on Linux, or taken), a free port is used instead, said once in the
    /// log ([`Emulator::web_port`] tells which). 0 picks a free one at once.
    pub web_port: u16,
    /// Bearer tokens ARM accepts. `None` accepts any bearer token when `host` is a loopback
    /// address; on any other address a random token is generated instead (see
    /// [`Emulator::arm_token`]), so the network never reaches the owner keys without one.
    pub arm_tokens: Option<Vec<String>>,
    /// The only subscription id ARM answers for (others get `SubscriptionNotFound`).
    pub subscription_id: String,
    /// The only resource group ARM answers for (others get `ResourceGroupNotFound`).
    pub resource_group: String,
    /// Limits of the HTTPS listener.
    pub rest_limits: RestLimits,
    /// Azure's behaviour over time on the REST APIs: long-running operations, paging,
    /// throttling.
    pub rest_behaviour: RestBehaviour,
    /// Port of AMQP over TLS (the hubs' Event Hub-compatible endpoint) on each hub's address:
    /// 5671 as on Azure. Where it cannot be bound, a free port is used instead, said once in
    /// the log ([`Emulator::amqp_port`] tells which). 0 picks a free one at once.
    pub amqp_port: u16,
    /// Hubs share the names that reach 127.0.0.1 (this address, then `localhost`) even where
    /// they could have loopback addresses of their own: what a macOS loopback forces, on any
    /// machine, for tests. Also on when [`loopback::SHARED_ENV`] is `1`.
    pub shared_hub_addresses: bool,
    /// The simulated now at start, Unix seconds: a new data folder's clock starts there, an
    /// existing folder's clock is moved forward to it (never back). `None` keeps the
    /// folder's clock (the wall clock for a new folder). See [`Cloud::advance_time`].
    pub start_time: Option<i64>,
}

/// How the REST APIs behave over time, as Azure's do, so that clients' waiting, paging and
/// retrying is exercised. The defaults keep the shapes (201/202 with `Azure-AsyncOperation`,
/// `nextLink` past a page) but cost no time.
#[derive(Debug, Clone)]
pub struct RestBehaviour {
    /// How long ARM's create, update and delete of a hub or DPS run: the resource reports
    /// `Activating` / `Transitioning` / `Deleting` meanwhile (a name being deleted stays
    /// taken) and the operation `Running`.
    pub operation_latency: Duration,
    /// Hubs or DPS instances per page of ARM's lists; `nextLink` leads to the rest.
    pub page_size: usize,
    /// Every Nth authenticated request of each REST API (ARM, DPS service, hub service,
    /// counted apart) is answered 429 with `Retry-After`; 0 never.
    pub throttle_every: u32,
    /// The `Retry-After` seconds of those 429s.
    pub throttle_retry_after: u32,
}

impl RestBehaviour {
    /// The behaviour a host asks for, checked: operations of 0 to 3,600 seconds, pages of at
    /// least one item.
    pub fn new(
        operation_seconds: f64,
        page_size: usize,
        throttle_every: u32,
        throttle_retry_after: u32,
    ) -> Result<Self> {
        if !(operation_seconds.is_finite() && (0.0..=3600.0).contains(&operation_seconds)) {
            return Err(Error::config(format!(
                "arm_operation_seconds must be between 0 and 3600, not {operation_seconds}"
            )));
        }
        if page_size == 0 {
            return Err(Error::config("arm_page_size must be at least 1"));
        }
        Ok(RestBehaviour {
            operation_latency: Duration::from_secs_f64(operation_seconds),
            page_size,
            throttle_every,
            throttle_retry_after,
        })
    }
}

impl Default for RestBehaviour {
    fn default() -> Self {
        RestBehaviour {
            operation_latency: Duration::ZERO,
            page_size: 100,
            throttle_every: 0,
            throttle_retry_after: 1,
        }
    }
}

/// The `retry-after` Azure's DPS sends on its 202 (assigning) replies (the wire-protocol notes,
/// "202 Accepted"): [`EmulatorConfig::poll_retry_after`] set to it paces devices as Azure does.
pub const AZURE_POLL_RETRY_AFTER: u32 = 3;

/// The subscription id the emulator's ARM answers for by default (Python's `LocalCloud` too).
pub(crate) const DEFAULT_SUBSCRIPTION_ID: &str = "00000000-0000-0000-0000-000000000000";
/// The resource group the emulator's ARM answers for by default.
pub(crate) const DEFAULT_RESOURCE_GROUP: &str = "dpskit-local";

/// Limits of the HTTPS listener, so that slow or idle clients cannot starve it.
#[derive(Debug, Clone)]
pub struct RestLimits {
    /// Connections served at once; further ones wait in the accept backlog.
    pub max_connections: usize,
    /// Time allowed to send a request's headers (also the TLS handshake deadline).
    pub header_timeout: Duration,
    /// Time allowed to send a whole request body once the headers are accepted.
    pub body_timeout: Duration,
}

impl Default for RestLimits {
    fn default() -> Self {
        RestLimits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            data_dir: None,
            host: "127.0.0.1".into(),
            port: 8883,
            limits: Limits::default(),
            poll_retry_after: 0,
            worker_threads: None,
            https_port: 0,
            web_port: WEB_PORT,
            amqp_port: amqp::AMQP_PORT,
            arm_tokens: None,
            subscription_id: DEFAULT_SUBSCRIPTION_ID.into(),
            resource_group: DEFAULT_RESOURCE_GROUP.into(),
            rest_limits: RestLimits::default(),
            rest_behaviour: RestBehaviour::default(),
            shared_hub_addresses: false,
            start_time: None,
        }
    }
}

/// The MQTT listeners: DPS's address and one per hub address (hubs sharing a name share its
/// listener), all on one port. Shared with the REST layer, which creates hubs that must become
/// reachable at once.
pub(crate) struct Listeners {
    handle: tokio::runtime::Handle,
    context: Arc<server::ServerContext>,
    port: std::sync::atomic::AtomicU16,
    listening: Mutex<Vec<SocketAddr>>,
    /// Port 443's listeners (HTTPS and MQTT over WebSockets), once the REST side exists.
    web: std::sync::OnceLock<Arc<web::WebContext>>,
    web_ports: PortWithFallback,
    /// Port 5671's listeners (AMQP), once the REST side exists.
    amqp: std::sync::OnceLock<Arc<amqp::AmqpContext>>,
    amqp_ports: PortWithFallback,
    stopped: std::sync::atomic::AtomicBool,
}

/// A port every resource address serves (443, 5671): the configured one, or, when it cannot
/// be bound on the first address, one free port chosen then for every address, so one number
/// reaches every resource and the connection strings can name it.
struct PortWithFallback {
    port: std::sync::atomic::AtomicU16,
    listening: Mutex<Vec<SocketAddr>>,
}

impl PortWithFallback {
    fn new(port: u16) -> Self {
        PortWithFallback {
            port: std::sync::atomic::AtomicU16::new(port),
            listening: Mutex::new(Vec::new()),
        }
    }

    fn port(&self) -> u16 {
        self.port.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn listening(&self) -> std::sync::MutexGuard<'_, Vec<SocketAddr>> {
        self.listening.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `ip` (or every address) is served already.
    fn covers(&self, ip: IpAddr) -> bool {
        self.listening()
            .iter()
            .any(|a| a.ip() == ip || a.ip().is_unspecified())
    }
}

/// Azure's port for HTTPS and MQTT over WebSockets.
pub const WEB_PORT: u16 = 443;

impl Listeners {
    /// The web port: the configured one, or the fallback once it was chosen.
    pub(crate) fn web_port(&self) -> u16 {
        self.web_ports.port()
    }

    /// The AMQP port: the configured one, or the fallback once it was chosen.
    pub(crate) fn amqp_port(&self) -> u16 {
        self.amqp_ports.port()
    }

    fn listen(&self, ip: IpAddr, port: u16) -> Result<SocketAddr> {
        let listener = self.bind(ip, port)?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::emulator_caused(format!("cannot listen on {ip}:{port}"), e))?;
        self.handle
            .spawn(server::serve(listener, self.context.clone()));
        self.listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(bound);
        Ok(bound)
    }

    /// Serves port 443 (or the fallback) on `ip`: HTTPS and MQTT over WebSockets.
    fn listen_web(&self, ip: IpAddr) -> Result<()> {
        let Some(context) = self.web.get() else {
            return Ok(());
        };
        self.listen_with_fallback(ip, &self.web_ports, |port, e, chosen| {
            log::warn!(
                "emulator: cannot listen on port {port} ({e}): HTTPS and MQTT over \
                 WebSockets are served on port {chosen} of each resource's address \
                 instead, and the service connection strings name it \
                 (HostName=host:{chosen}); clients that always dial 443 (the official \
                 device SDKs' WebSockets) cannot reach it. On Linux, allow 443 with \
                 `sudo sysctl net.ipv4.ip_unprivileged_port_start=443` or \
                 `sudo setcap cap_net_bind_service=+ep $(readlink -f $(which python3))`"
            );
        })
        .map(|listener| drop(self.handle.spawn(web::serve(listener, context.clone()))))
    }

    /// Serves AMQP (the hubs' Event Hub-compatible endpoint) on `ip`, 5671 or the fallback.
    fn listen_amqp(&self, ip: IpAddr) -> Result<()> {
        let Some(context) = self.amqp.get() else {
            return Ok(());
        };
        self.listen_with_fallback(ip, &self.amqp_ports, |port, e, chosen| {
            log::warn!(
                "emulator: AMQP port {port} cannot be bound ({e}): the hubs' Event \
                 Hub-compatible endpoint is served on port {chosen} of each hub's address \
                 instead; Event Hubs clients reach it with \
                 custom_endpoint_address=\"sb://{{hub host}}:{chosen}\", and the official \
                 service SDK's cloud-to-device sends (which always dial 5671) cannot"
            );
        })
        .map(|listener| drop(self.handle.spawn(amqp::serve(listener, context.clone()))))
    }

    /// Binds `ports`' port on `ip`; when it cannot be bound on the first address, a free port
    /// instead (`warn(port, why, chosen)` says so, once), which every later address then uses.
    fn listen_with_fallback(
        &self,
        ip: IpAddr,
        ports: &PortWithFallback,
        warn: impl FnOnce(u16, &std::io::Error, u16),
    ) -> Result<tokio::net::TcpListener> {
        let port = ports.port();
        let first = ports.listening().is_empty();
        let listener = match self.bind_raw(ip, port) {
            Ok(listener) => listener,
            Err(e) if port != 0 && first => {
                let listener = self.bind(ip, 0)?;
                let chosen = listener.local_addr().map(|a| a.port()).unwrap_or(0);
                warn(port, &e, chosen);
                ports
                    .port
                    .store(chosen, std::sync::atomic::Ordering::Relaxed);
                listener
            }
            Err(e) => return Err(self.bind_error(SocketAddr::new(ip, port), e)),
        };
        let bound = listener
            .local_addr()
            .map_err(|e| Error::emulator_caused(format!("cannot listen on {ip}:{port}"), e))?;
        if port == 0 {
            ports
                .port
                .store(bound.port(), std::sync::atomic::Ordering::Relaxed);
        }
        ports.listening().push(bound);
        Ok(listener)
    }

    fn bind(&self, ip: IpAddr, port: u16) -> Result<tokio::net::TcpListener> {
        self.bind_raw(ip, port)
            .map_err(|e| self.bind_error(SocketAddr::new(ip, port), e))
    }

    fn bind_raw(&self, ip: IpAddr, port: u16) -> std::io::Result<tokio::net::TcpListener> {
        if self.stopped.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::other("the emulator is stopped"));
        }
        let std_listener = std::net::TcpListener::bind(SocketAddr::new(ip, port))?;
        std_listener.set_nonblocking(true)?;
        let _guard = self.handle.enter();
        tokio::net::TcpListener::from_std(std_listener)
    }

    fn bind_error(&self, address: SocketAddr, e: std::io::Error) -> Error {
        let port = address.port();
        {
            if e.kind() == std::io::ErrorKind::AddrNotAvailable {
                // A data folder from a machine with all of 127.0.0.0/8, opened on a Mac.
                return Error::emulator(loopback::unbindable_message(
                    loopback::Os::current(),
                    address,
                ));
            }
            let hint = if port == 8883 {
                " (another emulator or MQTT broker may be running; pass port=0 for a free port)"
            } else {
                ""
            };
            Error::emulator_caused(format!("cannot listen on {address}{hint}"), e)
        }
    }

    /// Makes a hub host reachable: binds the shared port on each address it stands for (see
    /// [`loopback::addresses_of`]) that no listener covers yet. An address that may be missing
    /// (::1 for `localhost`) and cannot be bound is only logged: clients fall back to the next
    /// address `localhost` resolves to.
    pub(crate) fn listen_for_host(&self, host: &str) -> Result<()> {
        let (needed, optional) = loopback::addresses_of(host);
        let port = self.port.load(std::sync::atomic::Ordering::Relaxed);
        for ip in needed {
            if !self.covers(ip) {
                self.listen(ip, port)?;
            }
            if !self.web_ports.covers(ip) {
                self.listen_web(ip)?;
            }
            if !self.amqp_ports.covers(ip) {
                self.listen_amqp(ip)?;
            }
        }
        for ip in optional {
            if !self.web_ports.covers(ip)
                && let Err(e) = self.listen_web(ip)
            {
                log::warn!("emulator: port 443 of hub host {host} is not served on {ip} ({e})");
            }
            if !self.amqp_ports.covers(ip)
                && let Err(e) = self.listen_amqp(ip)
            {
                log::warn!("emulator: AMQP of hub host {host} is not served on {ip} ({e})");
            }
            if !self.covers(ip)
                && let Err(e) = self.listen(ip, port)
            {
                log::warn!(
                    "emulator: hub host {host} is served on 127.0.0.1 only, not on {ip} ({e}); \
                     clients that resolve {host} to {ip} first try 127.0.0.1 next"
                );
            }
        }
        Ok(())
    }

    fn covers(&self, ip: IpAddr) -> bool {
        self.listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|a| a.ip() == ip || a.ip().is_unspecified())
    }
}

/// A running emulator. Dropping it stops it.
pub struct Emulator {
    runtime: Option<Runtime>,
    cloud: Arc<Cloud>,
    dps: Arc<dps::DpsEngine>,
    hubs: Arc<hub::HubEngine>,
    tls: Arc<tls::EmulatorTls>,
    tracer: Arc<trace::Tracer>,
    recorder: Arc<rest::recorder::RequestRecorder>,
    listeners: Arc<Listeners>,
    data_dir: PathBuf,
    temporary: Option<tempfile::TempDir>,
    /// Whether the data folder was temporary (kept after `temporary` is dropped on stop).
    is_temporary: bool,
    https_port: u16,
    /// The bearer token ARM requires (configured or generated), `None` when it accepts any.
    arm_token: Option<String>,
    /// The REST listener's throttle, with its counts.
    throttle: Arc<rest::Throttle>,
}

impl Emulator {
    /// Starts the emulator: opens (or creates) its state and CA, binds the listener for DPS and
    /// for every hub already configured.
    pub fn start(config: EmulatorConfig) -> Result<Self> {
        let (data_dir, temporary) = match &config.data_dir {
            Some(dir) => {
                secrets::private_dir(dir)?;
                (dir.clone(), None)
            }
            None => {
                let mut builder = tempfile::Builder::new();
                builder.prefix("dpskit-local-cloud-");
                // Created owner-only: tempfile's default leaves the umask's 0755.
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    builder.permissions(std::fs::Permissions::from_mode(0o700));
                }
                let temp = builder
                    .tempdir()
                    .map_err(|e| Error::emulator_caused("cannot create a temporary folder", e))?;
                secrets::private_dir(temp.path())?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let host_ip: IpAddr = config.host.parse().map_err(|_| {
            Error::config(format!("host must be an IP address, not {:?}", config.host))
        })?;
        let mut hosts = vec![config.host.clone()];
        if host_ip.is_loopback() {
            hosts.push("localhost".into());
        }
        let tls = Arc::new(tls::EmulatorTls::load_or_create(&data_dir, hosts)?);
        let store = Arc::new(store::Store::open(&data_dir)?);
        let cloud = Arc::new(Cloud::open(
            store.clone(),
            tls.clone(),
            config.host.clone(),
            config.shared_hub_addresses || loopback::shared_by_environment(),
            config.start_time,
        )?);
        let dps = Arc::new(dps::DpsEngine::new(cloud.clone(), config.poll_retry_after));
        let hubs = Arc::new(hub::HubEngine::new(cloud.clone(), store.clone())?);
        let tracer = Arc::new(trace::Tracer::default());
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all().thread_name("dpskit-emulator");
        if let Some(n) = config.worker_threads {
            builder.worker_threads(n.max(1));
        }
        let runtime = builder
            .build()
            .map_err(|e| Error::emulator_caused("cannot start the emulator runtime", e))?;
        // Expired C2D messages leave their queues on time even with no device connected.
        drop(runtime.spawn(hub::HubEngine::sweep_expired_c2d(Arc::downgrade(&hubs))));
        // Events past their hub's retention leave the data folder.
        drop(runtime.spawn(hub::HubEngine::sweep_retention(Arc::downgrade(&hubs))));
        let context = Arc::new(server::ServerContext {
            acceptor: tokio_rustls::TlsAcceptor::from(tls.server_config()?),
            dps: dps.clone(),
            hubs: hubs.clone(),
            tracer: tracer.clone(),
            limits: config.limits.clone(),
            slots: Arc::new(Semaphore::new(config.limits.max_connections)),
        });
        let listeners = Arc::new(Listeners {
            handle: runtime.handle().clone(),
            context,
            port: std::sync::atomic::AtomicU16::new(config.port),
            listening: Mutex::new(Vec::new()),
            web: std::sync::OnceLock::new(),
            web_ports: PortWithFallback::new(config.web_port),
            amqp: std::sync::OnceLock::new(),
            amqp_ports: PortWithFallback::new(config.amqp_port),
            stopped: std::sync::atomic::AtomicBool::new(false),
        });
        let mut emulator = Emulator {
            runtime: Some(runtime),
            cloud,
            dps,
            hubs,
            tls,
            tracer,
            recorder: Arc::default(),
            listeners,
            data_dir,
            is_temporary: temporary.is_some(),
            temporary,
            https_port: 0,
            arm_token: None,
            throttle: Arc::new(rest::Throttle::new(
                config.rest_behaviour.throttle_every,
                config.rest_behaviour.throttle_retry_after,
            )),
        };
        let first = emulator.listeners.listen(host_ip, config.port)?;
        emulator
            .listeners
            .port
            .store(first.port(), std::sync::atomic::Ordering::Relaxed);
        let arm_tokens = match config.arm_tokens.clone() {
            Some(tokens) => Some(tokens),
            // Off loopback anyone on the network could ask ARM for the owner keys.
            None if !host_ip.is_loopback() => {
                log::warn!(
                    "emulator: {host_ip} is not a loopback address and no ARM token was configured: ARM requires a generated bearer token (dpskit's LocalCloud keeps it in endpoints.json in the data folder, mode 0600)"
                );
                Some(vec![crate::sas::generate_key()?])
            }
            None => None,
        };
        emulator.arm_token = arm_tokens.as_ref().and_then(|t| t.first().cloned());
        emulator.https_port = emulator.listen_https(host_ip, &config, arm_tokens)?.port();
        let amqp = Arc::new(amqp::AmqpContext::new(
            emulator.cloud.clone(),
            store,
            emulator.hubs.clone(),
            tokio_rustls::TlsAcceptor::from(emulator.tls.amqp_config()?),
            emulator.listeners.clone(),
        ));
        if emulator.listeners.amqp.set(amqp).is_err() {
            return Err(Error::emulator("the AMQP listener was set up twice"));
        }
        emulator.listeners.listen_amqp(host_ip)?;
        for hub in emulator.cloud.hubs() {
            emulator.listeners.listen_for_host(&hub.host_name)?;
        }
        log::info!(
            "emulator: listening on {first} (MQTT over TLS), state in {}",
            emulator.data_dir.display()
        );
        Ok(emulator)
    }

    fn listen_https(
        &self,
        ip: IpAddr,
        config: &EmulatorConfig,
        arm_tokens: Option<Vec<String>>,
    ) -> Result<SocketAddr> {
        let port = config.https_port;
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::emulator("the emulator is stopped"))?;
        let address = SocketAddr::new(ip, port);
        let fail = |e: std::io::Error| {
            Error::emulator_caused(format!("cannot listen on {address} (HTTPS)"), e)
        };
        let std_listener = std::net::TcpListener::bind(address).map_err(fail)?;
        std_listener.set_nonblocking(true).map_err(fail)?;
        let bound = std_listener.local_addr().map_err(fail)?;
        let _guard = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(fail)?;
        let context = Arc::new(rest::RestContext {
            cloud: self.cloud.clone(),
            hubs: self.hubs.clone(),
            dps_quotas: self.dps.quotas(),
            acceptor: tokio_rustls::TlsAcceptor::from(self.tls.https_config()?),
            listeners: self.listeners.clone(),
            management_authority: bound.to_string(),
            arm_tokens,
            subscription_id: config.subscription_id.clone(),
            resource_group: config.resource_group.clone(),
            slots: Arc::new(Semaphore::new(config.rest_limits.max_connections.max(1))),
            limits: config.rest_limits.clone(),
            operations: rest::Operations::new(config.rest_behaviour.operation_latency),
            page_size: config.rest_behaviour.page_size.max(1),
            throttle: self.throttle.clone(),
            recorder: self.recorder.clone(),
        });
        runtime.spawn(rest::serve(listener, context.clone()));
        let web = Arc::new(web::WebContext {
            rest: context,
            server: self.listeners.context.clone(),
            acceptor: tokio_rustls::TlsAcceptor::from(self.tls.web_config()?),
        });
        if self.listeners.web.set(web).is_err() {
            return Err(Error::emulator("the web listener was set up twice"));
        }
        self.listeners.listen_web(ip)?;
        Ok(bound)
    }

    /// The port of HTTPS and MQTT over WebSockets on each resource's address: 443, or the
    /// free port used because 443 could not be bound (see [`EmulatorConfig::web_port`]).
    pub fn web_port(&self) -> u16 {
        self.listeners.web_port()
    }

    /// The port of AMQP over TLS on each hub's address (the Event Hub-compatible endpoint):
    /// 5671, or the free port used because 5671 could not be bound (see
    /// [`EmulatorConfig::amqp_port`]).
    pub fn amqp_port(&self) -> u16 {
        self.listeners.amqp_port()
    }

    /// The bearer token ARM requires: the first configured one, or the one generated because
    /// the emulator listens off loopback; `None` when ARM accepts any (loopback only).
    pub fn arm_token(&self) -> Option<&str> {
        self.arm_token.as_deref()
    }

    /// The port of the HTTPS listener (ARM and service REST APIs).
    pub fn https_port(&self) -> u16 {
        self.https_port
    }

    /// The 429s the REST listener has answered so far, per API (see
    /// [`RestBehaviour::throttle_every`]).
    pub fn throttled_requests(&self) -> ThrottledRequests {
        self.throttle.counts()
    }

    /// Creates a hub and starts listening on its address.
    pub fn create_hub(
        &self,
        name: &str,
        location: &str,
        host_name: Option<&str>,
    ) -> Result<model::HubRecord> {
        let hub = self.cloud.create_hub(name, location, host_name)?;
        self.listeners.listen_for_host(&hub.host_name)?;
        Ok(hub)
    }

    /// [`Emulator::create_hub`] with `partition_count` partitions on the hub's built-in events
    /// endpoint (`None`: Azure's default), refused outside the range ARM accepts.
    pub fn create_hub_with_partitions(
        &self,
        name: &str,
        location: &str,
        host_name: Option<&str>,
        partition_count: Option<u32>,
    ) -> Result<model::HubRecord> {
        if let Some(count) = partition_count {
            crate::limits::check_partition_count(count)?;
        }
        let hub = self.create_hub(name, location, host_name)?;
        match partition_count {
            None => Ok(hub),
            Some(count) => self.cloud.update_hub_events(name, |endpoint| {
                endpoint.partition_count = count;
                Ok(())
            }),
        }
    }

    /// The configuration API.
    pub fn cloud(&self) -> &Arc<Cloud> {
        &self.cloud
    }

    /// The emulator CA's certificate: what clients must trust.
    pub fn trust_pem(&self) -> String {
        self.tls.trust_pem()
    }

    /// The MQTT port (the one actually bound when 0 was asked for).
    pub fn mqtt_port(&self) -> u16 {
        self.listeners
            .port
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The folder holding state and the CA.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether the data folder is temporary (deleted on stop).
    pub fn is_temporary(&self) -> bool {
        self.is_temporary
    }

    /// Changes a DPS's realism knobs.
    pub fn update_dps_knobs(&self, dps: &str, change: impl FnOnce(&mut DpsKnobs)) -> Result<()> {
        self.cloud.dps(dps)?;
        self.dps.update_knobs(dps, change);
        Ok(())
    }

    /// Changes a DPS's knobs as a host asks for them, the values checked first.
    pub fn change_dps_knobs(&self, dps: &str, change: dps::DpsKnobChange) -> Result<()> {
        let apply = change.validate()?;
        self.update_dps_knobs(dps, apply)
    }

    /// Changes a hub's knobs (by host name) as a host asks for them, the values checked first;
    /// an unknown host name is the hub service's 404.
    pub fn change_hub_knobs(&self, host_name: &str, change: hub::HubKnobChange) -> Result<()> {
        let apply = change.validate()?;
        self.hubs.hub_for_host(host_name).ok_or_else(|| {
            Error::service(
                404,
                404_000,
                format!("no hub has the host name {host_name}"),
            )
        })?;
        self.hubs.update_knobs(host_name, apply);
        Ok(())
    }

    /// Registers an in-process custom allocator, referred to as `python:<name>` (or any
    /// `<scheme>:<name>` the host chooses) in an enrollment's custom allocation webhook URL.
    pub fn register_allocator(&self, name: &str, allocator: Arc<dyn dps::CustomAllocator>) {
        self.dps.register_allocator(name, allocator);
    }

    /// The IoT Hub engine (service-side operations).
    pub fn hubs(&self) -> &Arc<hub::HubEngine> {
        &self.hubs
    }

    /// A handle on the emulator's runtime, for service calls that wait (direct methods).
    pub fn runtime_handle(&self) -> Result<tokio::runtime::Handle> {
        self.runtime
            .as_ref()
            .map(|r| r.handle().clone())
            .ok_or_else(|| Error::emulator("the emulator is stopped"))
    }

    /// The exchange tracer.
    pub fn tracer(&self) -> &trace::Tracer {
        &self.tracer
    }

    /// The recorder of the HTTPS requests served (ARM and the service APIs).
    pub fn request_recorder(&self) -> &rest::recorder::RequestRecorder {
        &self.recorder
    }

    /// Whether the emulator is running.
    pub fn is_running(&self) -> bool {
        self.runtime.is_some()
    }

    /// Stops listening and closes every connection. State stays in the data folder (unless it is
    /// temporary).
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
            // Telemetry already acknowledged is committed; the store is closed once stop returns.
            self.hubs.stop_writer();
            log::info!("emulator: stopped");
        }
        self.listeners
            .stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.listeners
            .listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.listeners.web_ports.listening().clear();
        self.listeners.amqp_ports.listening().clear();
        // The state store keeps the SQLite file open; the folder can go once nothing serves.
        if let Some(temporary) = self.temporary.take()
            && let Err(e) = temporary.close()
        {
            log::warn!("emulator: could not delete the temporary state folder: {e}");
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}
