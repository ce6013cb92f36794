//! Hub addresses on machines whose loopback is one address. Stock SDKs dial port 8883 on the
//! hub's host name, so each hub needs a name that reaches the emulator; routing goes by the
//! CONNECT username, not by the address dialled, so a hub needs no address of its own to be
//! found. Where the loopback holds all of 127.0.0.0/8 (Linux, Windows) each hub keeps its own
//! address, 127.0.0.2, 127.0.0.3, ...; where only 127.0.0.1 exists (macOS, where `127.0.0.2`
//! needs `ifconfig lo0 alias`), hubs take the names that reach 127.0.0.1 on every OS without
//! setup, served by the listener already bound there: DPS's own address, then `localhost`.
//! `*.localhost` is not among them: macOS, Windows and glibc without systemd's resolver do not
//! resolve it. Past those the error says what to run on this OS to add an address, and
//! [`setup_text`] (`dpskit emulator --print-loopback-setup N`) prints it for N hubs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::{Error, Result};

/// Environment variable that makes hubs take the shared names even where their own loopback
/// addresses can be bound (`1`): how tests reproduce a macOS loopback on any machine.
pub(crate) const SHARED_ENV: &str = "DPSKIT_SHARED_HUB_ADDRESSES";

/// The name every OS resolves to the loopback without setup (to 127.0.0.1, and on some, such
/// as macOS and Windows, first to ::1).
pub(crate) const LOCALHOST: &str = "localhost";

/// Whether the environment asks for shared hub names (see [`SHARED_ENV`]).
pub(crate) fn shared_by_environment() -> bool {
    std::env::var(SHARED_ENV).is_ok_and(|v| v.trim() == "1")
}

/// Whether `ip` is an address of this machine: binding port 0 asks for the address alone, so
/// a port taken by another program does not count against it.
pub(crate) fn can_bind(ip: IpAddr) -> bool {
    std::net::TcpListener::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The host names a hub takes, in this order, when no address of its own can be bound: the
/// address DPS listens on (`base`), then `localhost`.
pub(crate) fn shared_names(base: Ipv4Addr) -> [String; 2] {
    [base.to_string(), LOCALHOST.to_string()]
}

/// The addresses that the listener must serve for hubs named `host`: the address itself, or
/// for `localhost` 127.0.0.1 and (where it exists) ::1, since some systems resolve `localhost`
/// to ::1 first. The second element lists those that may be missing without harm.
pub(crate) fn addresses_of(host: &str) -> (Vec<IpAddr>, Vec<IpAddr>) {
    if let Ok(ip) = host.parse::<IpAddr>() {
        (vec![ip], Vec::new())
    } else if host.eq_ignore_ascii_case(LOCALHOST) {
        (
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            vec![IpAddr::V6(Ipv6Addr::LOCALHOST)],
        )
    } else {
        // Another name is the user's: it resolves where they made it resolve.
        (Vec::new(), Vec::new())
    }
}

/// Chooses a new hub's host name after `base` (the loopback address DPS listens on): the next
/// loopback address no hub uses when it can be bound here (and `shared` is off), else the first
/// shared name no hub uses; `used` says whether a hub already has a host name.
pub(crate) fn choose(base: Ipv4Addr, shared: bool, used: impl Fn(&str) -> bool) -> Result<String> {
    let start = u32::from(base);
    let next = (1..=250)
        .map(|i| Ipv4Addr::from(start + i))
        .find(|a| !used(&a.to_string()));
    if let Some(next) = next
        && !shared
        && can_bind(IpAddr::V4(next))
    {
        return Ok(next.to_string());
    }
    let names = shared_names(base);
    if let Some(name) = names.iter().find(|n| !used(n)) {
        return Ok(name.clone());
    }
    Err(Error::config(exhausted_message(
        Os::current(),
        next,
        &names,
        shared,
    )))
}

/// The operating systems whose loopback setup differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    /// macOS and the BSDs: only 127.0.0.1 by default; `ifconfig lo0 alias` adds one.
    Bsd,
    /// Linux: 127.0.0.1/8 by default; a namespace or container may hold 127.0.0.1/32 only.
    Linux,
    /// Windows: every 127.0.0.0/8 address can be bound without setup.
    Windows,
    /// Anything else: said in words.
    Other,
}

impl Os {
    /// The OS this was built for.
    pub fn current() -> Os {
        if cfg!(any(
            target_os = "macos",
            target_os = "ios",
            target_os = "freebsd",
            target_os = "openbsd",
            target_os = "netbsd",
            target_os = "dragonfly"
        )) {
            Os::Bsd
        } else if cfg!(any(target_os = "linux", target_os = "android")) {
            Os::Linux
        } else if cfg!(windows) {
            Os::Windows
        } else {
            Os::Other
        }
    }
}

/// The command that adds `ip` to the loopback on `os` (`None` on Windows, which needs none).
pub(crate) fn setup_command(os: Os, ip: Ipv4Addr) -> Option<String> {
    match os {
        Os::Bsd => Some(format!("sudo ifconfig lo0 alias {ip} up")),
        Os::Linux => Some(format!("sudo ip addr add {ip}/8 dev lo")),
        Os::Windows | Os::Other => None,
    }
}

/// What to do on `os` so that `ip` can be bound, as one sentence.
pub(crate) fn advice(os: Os, ip: Ipv4Addr) -> String {
    match (os, setup_command(os, ip)) {
        (Os::Bsd, Some(command)) => {
            format!("add it with `{command}` (macOS and the BSDs; it lasts until the next reboot)")
        }
        (_, Some(command)) => format!("add it with `{command}` (it lasts until the next reboot)"),
        (Os::Windows, None) => format!(
            "Windows normally lets every 127.0.0.0/8 address be bound without setup, so \
             something (a firewall or a security policy) refuses {ip}"
        ),
        (_, None) => format!("add {ip} to the loopback interface"),
    }
}

pub(super) fn exhausted_message(
    os: Os,
    next: Option<Ipv4Addr>,
    names: &[String],
    shared: bool,
) -> String {
    let names = names.join(", ");
    match next {
        None => format!(
            "no host name left for another hub: every loopback address after DPS's and the \
             shared names ({names}) are taken; give the hub a host_name"
        ),
        Some(next) if shared => format!(
            "no host name left for another hub: {SHARED_ENV}=1 asks hubs to share the names \
             that reach 127.0.0.1 without setup ({names}), and hubs have taken them; unset it \
             so that hubs take their own loopback addresses ({next} next), or give the hub a \
             host_name"
        ),
        Some(next) => format!(
            "no host name left for another hub: this machine's loopback has no {next} (only \
             127.0.0.1 without setup, as on macOS), and hubs have taken the names that reach \
             127.0.0.1 ({names}); {}, or give the hub a host_name; `dpskit emulator \
             --print-loopback-setup N` prints the setup for N hubs",
            advice(os, next)
        ),
    }
}

/// The error for a loopback address that this machine does not have (a hub stored by a
/// machine whose loopback holds all of 127.0.0.0/8, opened on one where it does not).
pub(crate) fn unbindable_message(os: Os, address: SocketAddr) -> String {
    match address.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => format!(
            "cannot listen on {address}: this machine's loopback has no {ip} (only 127.0.0.1 \
             without setup, as on macOS); {}, then start again",
            advice(os, ip)
        ),
        _ => format!("cannot listen on {address}: it is not an address of this machine"),
    }
}

/// What `dpskit emulator --print-loopback-setup N` prints: the commands that let `hubs` hubs
/// after `base` each have their own loopback address on `os`.
pub fn setup_text(os: Os, base: Ipv4Addr, hubs: u32) -> Result<String> {
    if !base.is_loopback() {
        return Err(Error::config(format!(
            "{base} is not a loopback address: hubs of an emulator listening there need a \
             host_name each"
        )));
    }
    let start = u32::from(base);
    let last = start
        .checked_add(hubs)
        .filter(|l| Ipv4Addr::from(*l).is_loopback() && hubs <= 250)
        .ok_or_else(|| {
            Error::config(format!(
                "{hubs} hubs after {base} do not fit in 127.0.0.0/8 (at most 250)"
            ))
        })?;
    let addresses: Vec<Ipv4Addr> = (start + 1..=last).map(Ipv4Addr::from).collect();
    let mut text = String::new();
    match os {
        Os::Windows => text.push_str(
            "# Windows: every 127.0.0.0/8 address can be bound without setup; nothing to run.\n",
        ),
        Os::Other => {
            text.push_str("# Add these addresses to the loopback interface:\n");
            for ip in &addresses {
                text.push_str(&format!("# {ip}\n"));
            }
        }
        Os::Bsd | Os::Linux => {
            text.push_str(&format!(
                "# Loopback addresses for {hubs} hub(s) after {base} ({}; they last until the \
                 next reboot):\n",
                if os == Os::Bsd {
                    "macOS and the BSDs"
                } else {
                    "Linux"
                }
            ));
            for ip in &addresses {
                if let Some(command) = setup_command(os, *ip) {
                    text.push_str(&command);
                    text.push('\n');
                }
            }
        }
    }
    Ok(text)
}
