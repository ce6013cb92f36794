//! Hub addresses where the loopback is only 127.0.0.1: the shared names (forced here with
//! `shared_hub_addresses`, as a macOS loopback forces them) serve each hub's devices through the
//! one listener, routed by username; the error past them and the setup printed say exactly what
//! to run on each OS. (`tests/test_loopback_only.py` runs the real thing in a namespace whose
//! loopback holds only 127.0.0.1/32.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rumqttc::{Packet, PublishOptions};

use super::loopback::{self, Os};
use super::tests::support::{HubDevice, fixture_on, provision};
use super::*;

fn shared(data_dir: Option<PathBuf>) -> Emulator {
    Emulator::start(EmulatorConfig {
        data_dir,
        port: 0,
        web_port: 0,
        amqp_port: 0,
        worker_threads: Some(2),
        poll_retry_after: 0,
        shared_hub_addresses: true,
        ..EmulatorConfig::default()
    })
    .unwrap()
}

#[test]
fn hubs_sharing_127_0_0_1_and_localhost_each_get_their_own_devices() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture_on(shared(Some(dir.path().to_path_buf())));
    let hosts: Vec<String> = ["hub-a", "hub-b"]
        .iter()
        .map(|h| f.emulator.cloud().hub(h).unwrap().host_name)
        .collect();
    assert_eq!(hosts, ["127.0.0.1", "localhost"]);
    let error = f
        .emulator
        .create_hub("hub-c", "westeurope", None)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(
            "DPSKIT_SHARED_HUB_ADDRESSES=1 asks hubs to share the names that reach 127.0.0.1 \
             without setup (127.0.0.1, localhost), and hubs have taken them"
        ),
        "{error}"
    );
    assert!(error.contains("(127.0.0.2 next)"), "{error}");

    // Hashed allocation over both hubs: fixed ids, so the same split every run.
    f.sensors_group();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hubs = f.emulator.hubs().clone();
    let mut assigned = Vec::new();
    for i in 0..6 {
        let id = &format!("shared-dev-{i}");
        let device = f.device(id);
        let host = provision(
            &f.emulator,
            &f.scope,
            id,
            super::tests::support::device_auth(&device),
        )
        .assigned_hub();
        runtime.block_on(async {
            let mut d = HubDevice::connect(&f, &host, &device, true).await.unwrap();
            d.client
                .publish(
                    format!("devices/{id}/messages/events/"),
                    "{}",
                    PublishOptions::at_least_once(),
                )
                .await
                .unwrap();
            d.until(|p| matches!(p, Packet::PubAck(_))).await.unwrap();
        });
        // Stored by the hub the device named in its username, and by no other.
        for other in &hosts {
            let stored = hubs.telemetry(other, Some(id)).unwrap().len();
            assert_eq!(
                stored,
                usize::from(*other == host),
                "{id} on {host}: {other}"
            );
        }
        assigned.push(host);
    }
    assert!(assigned.iter().any(|h| h == "localhost"), "{assigned:?}");
    assert!(assigned.iter().any(|h| h == "127.0.0.1"), "{assigned:?}");

    // Where localhost resolves to ::1 first (macOS, Windows) clients dial ::1: it is served.
    let port = f.emulator.mqtt_port();
    if loopback::can_bind(IpAddr::V6(Ipv6Addr::LOCALHOST)) {
        std::net::TcpStream::connect_timeout(
            &SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
            Duration::from_secs(5),
        )
        .unwrap();
    }
    // After a restart the hubs keep their names and the listener serves them again.
    drop(f);
    let emulator = shared(Some(dir.path().to_path_buf()));
    assert_eq!(
        emulator.cloud().hub("hub-b").unwrap().host_name,
        "localhost"
    );
    assert_eq!(
        emulator.cloud().hub_devices("localhost").len(),
        assigned.iter().filter(|h| *h == "localhost").count()
    );
}

#[test]
fn the_setup_printed_for_each_os() {
    let base = Ipv4Addr::LOCALHOST;
    assert_eq!(
        loopback::setup_text(Os::Bsd, base, 2).unwrap(),
        "# Loopback addresses for 2 hub(s) after 127.0.0.1 (macOS and the BSDs; they last \
         until the next reboot):\nsudo ifconfig lo0 alias 127.0.0.2 up\n\
         sudo ifconfig lo0 alias 127.0.0.3 up\n"
    );
    assert_eq!(
        loopback::setup_text(Os::Linux, base, 1).unwrap(),
        "# Loopback addresses for 1 hub(s) after 127.0.0.1 (Linux; they last until the next \
         reboot):\nsudo ip addr add 127.0.0.2/8 dev lo\n"
    );
    let windows = loopback::setup_text(Os::Windows, base, 3).unwrap();
    assert!(windows.contains("nothing to run"), "{windows}");
    assert!(!windows.contains("sudo"), "{windows}");
    assert!(loopback::setup_text(Os::Linux, base, 251).is_err());
    assert!(loopback::setup_text(Os::Linux, Ipv4Addr::new(10, 0, 0, 1), 1).is_err());
}

#[test]
fn the_errors_say_what_to_run_on_each_os() {
    let names = loopback::shared_names(Ipv4Addr::LOCALHOST);
    let next = Some(Ipv4Addr::new(127, 0, 0, 2));
    let mac = loopback::exhausted_message(Os::Bsd, next, &names, false);
    assert!(
        mac.contains("this machine's loopback has no 127.0.0.2")
            && mac.contains("(127.0.0.1, localhost)"),
        "{mac}"
    );
    assert!(
        mac.contains("add it with `sudo ifconfig lo0 alias 127.0.0.2 up`"),
        "{mac}"
    );
    assert!(
        mac.contains("dpskit emulator --print-loopback-setup N"),
        "{mac}"
    );
    let linux = loopback::exhausted_message(Os::Linux, next, &names, false);
    assert!(
        linux.contains("`sudo ip addr add 127.0.0.2/8 dev lo`"),
        "{linux}"
    );
    let windows = loopback::exhausted_message(Os::Windows, next, &names, false);
    assert!(windows.contains("without setup, so something"), "{windows}");
    let stored = loopback::unbindable_message(
        Os::Bsd,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 8883),
    );
    assert_eq!(
        stored,
        "cannot listen on 127.0.0.2:8883: this machine's loopback has no 127.0.0.2 (only \
         127.0.0.1 without setup, as on macOS); add it with `sudo ifconfig lo0 alias 127.0.0.2 \
         up` (macOS and the BSDs; it lasts until the next reboot), then start again"
    );
}
