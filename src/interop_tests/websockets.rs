//! MQTT over WebSockets on the web port, and HTTP CONNECT proxies: dpskit's DPS and hub
//! clients provision, send and read their twin over WebSockets (X.509 and SAS), through a
//! proxy over both transports; the emulator refuses upgrades Azure would not serve.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::emulator::tests::support::*;
use crate::hub::{HubClient, HubConnectOptions, TelemetryMessage};
use crate::provisioning::{DeviceAuth, ProvisioningRequest, Trust, provision};
use crate::transport::mqtt::{DeviceTransport, Via};
use crate::transport::proxy::Proxy;

/// A small HTTP CONNECT proxy on 127.0.0.1: tunnels each connection to the target its CONNECT
/// names, and records those targets (a proxy that is not used cannot pass the test).
async fn connect_proxy() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let targets = Arc::new(Mutex::new(Vec::new()));
    let seen = targets.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    head.push(client.read_u8().await.unwrap());
                }
                let head = String::from_utf8(head).unwrap();
                let target = head
                    .strip_prefix("CONNECT ")
                    .and_then(|rest| rest.split(' ').next())
                    .unwrap()
                    .to_string();
                seen.lock().unwrap().push(target.clone());
                let mut server = TcpStream::connect(&target).await.unwrap();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (port, targets)
}

fn websockets(proxy: Option<Proxy>) -> Via {
    Via {
        transport: DeviceTransport::WebSockets,
        proxy,
    }
}

#[test]
fn dpskit_devices_provision_and_talk_over_websockets_and_through_a_proxy() {
    let f = fixture(None);
    f.sensors_group();
    let trust = Trust::from_pem(f.emulator.trust_pem().as_bytes()).unwrap();
    let web_port = f.emulator.web_port();
    assert_ne!(web_port, f.emulator.mqtt_port());
    let hub_a = f.emulator.cloud().hub("hub-a").unwrap().host_name;
    let sas_key = sas_device(&f, &hub_a, "ws-sas");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let hubs = f.emulator.hubs().clone();
    runtime.block_on(async {
        let (proxy_port, tunnelled) = connect_proxy().await;
        let proxy = Proxy::parse(&format!("http://127.0.0.1:{proxy_port}")).unwrap();
        for (id, via, port) in [
            ("ws-direct", websockets(None), web_port),
            ("ws-proxied", websockets(Some(proxy.clone())), web_port),
            (
                "tls-proxied",
                Via {
                    transport: DeviceTransport::Tls,
                    proxy: Some(proxy.clone()),
                },
                f.emulator.mqtt_port(),
            ),
        ] {
            let device = f.device(id);
            let request = ProvisioningRequest {
                host: "127.0.0.1".into(),
                port,
                via: via.clone(),
                id_scope: f.scope.clone(),
                registration_id: id.into(),
                auth: DeviceAuth::X509(device.shared_credential()),
                payload: None,
                timeout: Duration::from_secs(30),
                csr: None,
                clock: crate::clock::Clock::system(),
            };
            let registration = provision(&request, &trust).await.unwrap();
            let hub = registration.assigned_hub.clone().unwrap();
            let mut options = HubConnectOptions::new(
                &hub,
                port,
                id,
                DeviceAuth::X509(device.shared_credential()),
            );
            options.via = via;
            options.receive = true;
            let client = HubClient::connect(options, &trust).await.unwrap();
            client
                .send_telemetry(&TelemetryMessage::new(format!("hello from {id}")))
                .await
                .unwrap();
            let twin = client.get_twin().await.unwrap();
            assert_eq!(twin["desired"]["$version"], 1, "{twin}");
            client.close().await;
            let [record] = &hubs.telemetry(&hub, Some(id)).unwrap()[..] else {
                panic!("one message from {id}")
            };
            assert_eq!(record.body, format!("hello from {id}").as_bytes());
        }
        // A symmetric-key device over WebSockets: its SAS token rides in CONNECT as over TLS.
        let mut options = HubConnectOptions::new(
            &hub_a,
            web_port,
            "ws-sas",
            DeviceAuth::SymmetricKey(sas_key),
        );
        options.via = websockets(None);
        let client = HubClient::connect(options, &trust).await.unwrap();
        client
            .send_telemetry(&TelemetryMessage::new("sas over websockets"))
            .await
            .unwrap();
        client.close().await;
        assert_eq!(hubs.telemetry(&hub_a, Some("ws-sas")).unwrap().len(), 1);

        let tunnelled = tunnelled.lock().unwrap().clone();
        let mqtt = f.emulator.mqtt_port();
        // DPS then the hub, for each proxied device.
        assert_eq!(tunnelled.len(), 4, "{tunnelled:?}");
        assert!(
            tunnelled.contains(&format!("127.0.0.1:{web_port}")),
            "{tunnelled:?}"
        );
        assert!(
            tunnelled.contains(&format!("127.0.0.1:{mqtt}")),
            "{tunnelled:?}"
        );
    });
}

/// What Azure would not serve is refused before any MQTT: another path, no `mqtt`
/// subprotocol, a wrong WebSocket version; a proxy that refuses the tunnel is an error.
#[test]
fn the_web_listener_refuses_upgrades_it_does_not_serve() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    let f = fixture(None);
    let web_port = f.emulator.web_port();
    let config = Arc::new(client_tls(&f.emulator.trust_pem(), None));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let upgrade = |path: &str, protocol: Option<&'static str>, version: &'static str| {
            let mut request = format!("wss://127.0.0.1:{web_port}{path}")
                .into_client_request()
                .unwrap();
            if let Some(protocol) = protocol {
                request
                    .headers_mut()
                    .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(protocol));
            }
            request
                .headers_mut()
                .insert("Sec-WebSocket-Version", HeaderValue::from_static(version));
            let config = config.clone();
            async move {
                let tcp = TcpStream::connect(("127.0.0.1", web_port)).await.unwrap();
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect("127.0.0.1".try_into().unwrap(), tcp)
                    .await
                    .unwrap();
                match tokio_tungstenite::client_async(request, tls).await {
                    Ok(_) => 101,
                    Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                        response.status().as_u16()
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        };
        assert_eq!(upgrade("/$iothub/websocket", Some("mqtt"), "13").await, 101);
        assert_eq!(upgrade("/mqtt", Some("mqtt"), "13").await, 404);
        assert_eq!(upgrade("/$iothub/websocket", None, "13").await, 400);
        assert_eq!(upgrade("/$iothub/websocket", Some("wamp"), "13").await, 400);
        assert_eq!(upgrade("/$iothub/websocket", Some("mqtt"), "8").await, 426);

        // A proxy that answers 407 (authentication required): the tunnel is refused.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut client, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = client.read(&mut buf).await;
            let _ = client
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                .await;
        });
        let proxy = Proxy::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let refused = proxy.tunnel("127.0.0.1", web_port).await.unwrap_err();
        assert!(refused.to_string().contains("407"), "{refused}");
    });
}
