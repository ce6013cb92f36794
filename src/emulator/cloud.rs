//! The emulator's configuration API: hubs, DPS instances, links, CA certificates with proof of
//! possession, enrollments and the records DPS keeps. The Python `LocalCloud` and (later) the
//! management REST layer both sit on these methods; nothing else changes the configuration.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::clock::Clock;
use crate::emulator::model::*;
use crate::emulator::store::{Store, kind};
use crate::emulator::tls::EmulatorTls;
use crate::error::{Error, Result};
use crate::pki::Certificate;

/// In-memory view of every record, kept in step with the store.
#[derive(Default)]
pub(crate) struct Model {
    pub hubs: BTreeMap<String, HubRecord>,
    pub dps: BTreeMap<String, DpsRecord>,
    /// (dps, group id)
    pub groups: BTreeMap<(String, String), EnrollmentGroup>,
    /// (dps, lower-case registration id)
    pub enrollments: BTreeMap<(String, String), IndividualEnrollment>,
    /// (dps, lower-case registration id)
    pub registrations: BTreeMap<(String, String), RegistrationRecord>,
    /// (hub host, device id)
    pub devices: BTreeMap<(String, String), HubDevice>,
    /// Device Registry namespaces, their policies' CAs and the links to them.
    pub registry: crate::emulator::device_registry::Registry,
}

/// Options for a new enrollment (group or individual).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EnrollmentSpec {
    /// Attestation.
    pub attestation: Option<Attestation>,
    /// Policies.
    pub settings: EnrollmentSettings,
    /// Device id (individual enrollments only).
    pub device_id: Option<String>,
}

/// The configuration and records of the local cloud.
pub struct Cloud {
    store: Arc<Store>,
    model: RwLock<Model>,
    tls: Arc<EmulatorTls>,
    /// The address DPS listens on; hubs get the following loopback addresses (see
    /// `loopback`).
    dps_host: String,
    /// Whether hubs share the names that reach 127.0.0.1 even where they could have their own
    /// loopback addresses (`loopback::SHARED_ENV`, for tests).
    shared_hub_addresses: bool,
    /// The cloud's now: certificate validity, SAS expiry, issuance, timestamps. Moved forward
    /// by [`Cloud::advance_time`]; its offset from the wall clock is kept in the store.
    clock: Clock,
}

/// The store key of the clock's offset from the wall clock (milliseconds).
const CLOCK_KEY: &str = "offset_ms";

/// Current time as Azure writes it in registration records: RFC 3339, 7 fractional digits.
pub(crate) fn azure_timestamp() -> String {
    format_azure_time(time::OffsetDateTime::now_utc())
}

/// Unix seconds as Azure's data-plane timestamps (`2023-05-19T23:10:35.0000000Z`).
pub(crate) fn azure_time(unix: i64) -> String {
    format_azure_time(
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
    )
}

/// Unix milliseconds as Azure's data-plane timestamps (a C2D message's `$.exp`).
pub(crate) fn azure_time_ms(unix_ms: i64) -> String {
    format_azure_time(
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
    )
}

fn format_azure_time(now: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.nanosecond() / 100
    )
}

pub(crate) use crate::random::guid as random_guid;

/// An etag as DPS writes them: base64 of a quoted GUID.
pub(crate) fn new_etag() -> String {
    BASE64.encode(format!("\"{}\"", random_guid()))
}

fn not_found(what: &str, name: &str) -> Error {
    Error::service(404, 404_000, format!("{what} '{name}' was not found."))
}

fn conflict(what: &str, name: &str) -> Error {
    Error::service(409, 409_001, format!("{what} '{name}' already exists."))
}

fn check_etag(current: &str, if_match: Option<&str>) -> Result<()> {
    match if_match {
        Some(tag) if tag != "*" && tag.trim_matches('"') != current.trim_matches('"') => {
            Err(Error::service(
                412,
                412_002,
                "The ETag in the request does not match the ETag of the resource (precondition failed).",
            ))
        }
        _ => Ok(()),
    }
}

/// Longest device id IoT Hub accepts.
pub(crate) const MAX_DEVICE_ID_LEN: usize = 128;

/// Checks a hub device id against IoT Hub's rules: 1 to 128 ASCII letters, digits and
/// `- : . + % _ # * ? ! ( ) , = @ $ '`. Every path that creates an identity or names one in an
/// enrollment goes through here, so an id Azure would refuse never reaches the store.
pub(crate) fn validate_device_id(id: &str) -> Result<()> {
    let invalid = |rule: String| Error::config(format!("invalid device id {id:?}: {rule}"));
    if id.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    let len = id.chars().count();
    if len > MAX_DEVICE_ID_LEN {
        return Err(invalid(format!(
            "{len} characters; IoT Hub accepts at most {MAX_DEVICE_ID_LEN}"
        )));
    }
    if let Some(bad) = id.chars().find(|c| {
        !(c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | ':'
                    | '.'
                    | '+'
                    | '%'
                    | '_'
                    | '#'
                    | '*'
                    | '?'
                    | '!'
                    | '('
                    | ')'
                    | ','
                    | '='
                    | '@'
                    | '$'
                    | '\''
            ))
    }) {
        return Err(invalid(format!(
            "character {bad:?} is not allowed; IoT Hub accepts ASCII letters, digits and - : . + % _ # * ? ! ( ) , = @ $ '"
        )));
    }
    Ok(())
}

impl Cloud {
    /// Opens the configuration stored in `store`.
    pub(crate) fn open(
        store: Arc<Store>,
        tls: Arc<EmulatorTls>,
        dps_host: String,
        shared_hub_addresses: bool,
        start_time: Option<i64>,
    ) -> Result<Self> {
        let clock = open_clock(&store, start_time)?;
        let mut model = Model::default();
        for mut hub in store.all::<HubRecord>(kind::HUB)? {
            tls.cover_host(&hub.host_name)?;
            // A folder from before policies existed: its hubs get Azure's defaults, kept from
            // now on (the owner keys stay those already handed out).
            if hub.policies.is_empty() {
                hub.policies = default_hub_policies(&hub.primary_key, &hub.secondary_key)?;
                store.put(kind::HUB, &hub.name, &hub)?;
            }
            model.hubs.insert(hub.name.clone(), hub);
        }
        for dps in store.all::<DpsRecord>(kind::DPS)? {
            model.dps.insert(dps.name.clone(), dps);
        }
        for group in store.all::<(String, EnrollmentGroup)>(kind::GROUP)? {
            model
                .groups
                .insert((group.0, group.1.enrollment_group_id.clone()), group.1);
        }
        for (dps, e) in store.all::<(String, IndividualEnrollment)>(kind::ENROLLMENT)? {
            model
                .enrollments
                .insert((dps, e.registration_id.to_ascii_lowercase()), e);
        }
        for (dps, r) in store.all::<(String, RegistrationRecord)>(kind::REGISTRATION)? {
            model
                .registrations
                .insert((dps, r.registration_id.to_ascii_lowercase()), r);
        }
        for d in store.all::<HubDevice>(kind::DEVICE)? {
            model
                .devices
                .insert((d.hub.clone(), d.device_id.clone()), d);
        }
        model.registry = crate::emulator::device_registry::Registry::load(&store)?;
        Ok(Cloud {
            store,
            model: RwLock::new(model),
            tls,
            dps_host,
            shared_hub_addresses,
            clock,
        })
    }

    /// The cloud's clock (share it: every part of the emulator reads this one).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Moves the cloud's now forward by `seconds` (and keeps it so across restarts):
    /// certificates expire, SAS tokens run out, C2D messages and pending operations lapse as
    /// if that much time had passed. Returns the new now, Unix seconds.
    pub fn advance_time(&self, seconds: i64) -> Result<i64> {
        let ms = seconds
            .checked_mul(1000)
            .ok_or_else(|| Error::config("the time to advance is too large"))?;
        let offset = self.clock.advance_ms(ms)?;
        self.store.put(kind::CLOCK, CLOCK_KEY, &offset)?;
        Ok(self.clock.now())
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Model> {
        self.model.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, Model> {
        self.model.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The store the model is kept in (for the rooms that keep their part of the model in
    /// their own file, such as `device_registry`).
    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    /// The host DPS devices dial.
    pub fn dps_host(&self) -> &str {
        &self.dps_host
    }

    // ---- hubs ---------------------------------------------------------------------------

    /// Creates a hub. Its host name is the next free loopback address after the DPS address
    /// (stock SDKs cannot change ports or resolve made-up names, but every 127.0.0.0/8 address
    /// reaches this machine where it can be bound), else the first free name that reaches
    /// 127.0.0.1 without setup (see `loopback`), unless `host_name` is given.
    pub fn create_hub(
        &self,
        name: &str,
        location: &str,
        host_name: Option<&str>,
    ) -> Result<HubRecord> {
        // Azure's rule, so a hub made here could be made on Azure under the same name.
        crate::protocol::validate_hub_name(name)?;
        let mut model = self.write();
        if model.hubs.contains_key(name) {
            return Err(conflict("IoT hub", name));
        }
        let host_name = match host_name {
            Some(h) => h.to_string(),
            None => self.next_hub_address(&model)?,
        };
        if model
            .hubs
            .values()
            .any(|h| h.host_name.eq_ignore_ascii_case(&host_name))
        {
            return Err(Error::config(format!(
                "host name {host_name} is already used by another hub"
            )));
        }
        self.tls.cover_host(&host_name)?;
        let (primary_key, secondary_key) =
            (crate::sas::generate_key()?, crate::sas::generate_key()?);
        let hub = HubRecord {
            name: name.to_string(),
            host_name,
            location: location.to_string(),
            policies: default_hub_policies(&primary_key, &secondary_key)?,
            primary_key,
            secondary_key,
            created: self.clock.now(),
            sku: None,
            presets: false,
            events: Default::default(),
        };
        self.store.put(kind::HUB, name, &hub)?;
        model.hubs.insert(name.to_string(), hub.clone());
        Ok(hub)
    }

    fn next_hub_address(&self, model: &Model) -> Result<String> {
        let base: Ipv4Addr = match self.dps_host.parse() {
            Ok(ip) => ip,
            Err(_) => Ipv4Addr::LOCALHOST,
        };
        if !base.is_loopback() {
            return Err(Error::config(format!(
                "the emulator listens on {}, not a loopback address: give each hub a host_name",
                self.dps_host
            )));
        }
        super::loopback::choose(base, self.shared_hub_addresses, |name| {
            model
                .hubs
                .values()
                .any(|h| h.host_name.eq_ignore_ascii_case(name))
        })
    }

    /// Sets a hub's tier and units, and whether it enforces them; the updated record.
    pub fn set_hub_sku(
        &self,
        name: &str,
        sku: Option<crate::limits::HubSku>,
        presets: bool,
    ) -> Result<HubRecord> {
        self.update_hub(name, |hub| {
            hub.sku = sku;
            hub.presets = presets && sku.is_some();
            Ok(())
        })
    }

    /// Changes a hub's built-in events endpoint (its partitions at creation, its consumer
    /// groups later) through `change`, which refuses by returning `Err`; stored before the
    /// model changes, as every write is.
    pub fn update_hub_events(
        &self,
        name: &str,
        change: impl FnOnce(&mut EventsEndpoint) -> Result<()>,
    ) -> Result<HubRecord> {
        self.update_hub(name, |hub| change(&mut hub.events))
    }

    /// Changes a hub's record through `change` (which refuses by returning `Err`): stored
    /// first, then the model, so a failed write changes nothing.
    fn update_hub(
        &self,
        name: &str,
        change: impl FnOnce(&mut HubRecord) -> Result<()>,
    ) -> Result<HubRecord> {
        let mut model = self.write();
        let hub = model
            .hubs
            .get_mut(name)
            .ok_or_else(|| not_found("IoT hub", name))?;
        let mut updated = hub.clone();
        change(&mut updated)?;
        self.store.put(kind::HUB, name, &updated)?;
        *hub = updated.clone();
        Ok(updated)
    }

    /// Deletes a hub with its device identities, and unlinks it from every DPS. (Its loopback
    /// address keeps listening until the emulator restarts; nothing answers for it.)
    pub fn delete_hub(&self, name: &str) -> Result<()> {
        let mut model = self.write();
        let hub = model
            .hubs
            .get(name)
            .cloned()
            .ok_or_else(|| not_found("IoT hub", name))?;
        for (k, _) in model.devices.iter().filter(|(k, _)| k.0 == hub.host_name) {
            self.store
                .delete(kind::DEVICE, &format!("{}/{}", k.0, k.1))?;
        }
        for dps in model.dps.values_mut() {
            if dps.linked_hubs.iter().any(|l| l.hub == name) {
                dps.linked_hubs.retain(|l| l.hub != name);
                self.store.put(kind::DPS, &dps.name, &*dps)?;
            }
        }
        model
            .registry
            .drop_link(&self.store, super::device_registry::LinkedKind::Hub, name)?;
        self.store.delete(kind::HUB, name)?;
        model.devices.retain(|k, _| k.0 != hub.host_name);
        model.hubs.remove(name);
        Ok(())
    }

    /// A hub by name.
    pub fn hub(&self, name: &str) -> Result<HubRecord> {
        self.read()
            .hubs
            .get(name)
            .cloned()
            .ok_or_else(|| not_found("IoT hub", name))
    }

    /// Every hub.
    pub fn hubs(&self) -> Vec<HubRecord> {
        self.read().hubs.values().cloned().collect()
    }

    /// The device identities of a hub (by host name).
    pub fn hub_devices(&self, hub_host: &str) -> Vec<HubDevice> {
        self.read()
            .devices
            .values()
            .filter(|d| d.hub == hub_host)
            .cloned()
            .collect()
    }

    /// How many device identities a hub holds (by host name).
    pub fn hub_device_count(&self, hub_host: &str) -> usize {
        self.read()
            .devices
            .values()
            .filter(|d| d.hub == hub_host)
            .count()
    }

    /// One device identity of a hub, looked up by key (connects and service calls use it: no
    /// scan of the hub's other devices).
    pub fn hub_device(&self, hub_host: &str, device_id: &str) -> Option<HubDevice> {
        self.read()
            .devices
            .get(&(hub_host.to_string(), device_id.to_string()))
            .cloned()
    }

    /// The host name of the hub whose host name matches `host` case-insensitively.
    pub fn hub_host(&self, host: &str) -> Option<String> {
        self.read()
            .hubs
            .values()
            .find(|h| h.host_name.eq_ignore_ascii_case(host))
            .map(|h| h.host_name.clone())
    }

    /// The DPS owning an ID scope (case-insensitive).
    pub fn dps_by_scope(&self, id_scope: &str) -> Option<DpsRecord> {
        self.read()
            .dps
            .values()
            .find(|d| d.id_scope.eq_ignore_ascii_case(id_scope))
            .cloned()
    }

    /// Creates or replaces a device identity in a hub.
    pub fn put_hub_device(&self, device: HubDevice) -> Result<()> {
        validate_device_id(&device.device_id)?;
        self.store.put(
            kind::DEVICE,
            &format!("{}/{}", device.hub, device.device_id),
            &device,
        )?;
        self.write()
            .devices
            .insert((device.hub.clone(), device.device_id.clone()), device);
        Ok(())
    }

    /// Deletes a device identity of a hub (by host name).
    pub fn delete_hub_device(&self, hub_host: &str, device_id: &str) -> Result<()> {
        let key = (hub_host.to_string(), device_id.to_string());
        let mut model = self.write();
        if !model.devices.contains_key(&key) {
            return Err(Error::service(
                404,
                404_001,
                format!("Device '{device_id}' was not found in hub {hub_host}."),
            ));
        }
        self.store
            .delete(kind::DEVICE, &format!("{hub_host}/{device_id}"))?;
        model.devices.remove(&key);
        Ok(())
    }

    // ---- DPS ----------------------------------------------------------------------------

    /// Creates a DPS instance with a fresh ID scope.
    pub fn create_dps(&self, name: &str, location: &str) -> Result<DpsRecord> {
        crate::protocol::validate_dps_name(name)?;
        let mut model = self.write();
        if model.dps.contains_key(name) {
            return Err(conflict("provisioning service", name));
        }
        let id_scope = loop {
            let mut b = [0u8; 4];
            crate::random::fill_random(&mut b)?;
            let scope = format!("0ne{}", crate::pki::cert::hex_upper(&b));
            if !model.dps.values().any(|d| d.id_scope == scope) {
                break scope;
            }
        };
        let dps = DpsRecord {
            name: name.to_string(),
            id_scope,
            location: location.to_string(),
            primary_key: crate::sas::generate_key()?,
            secondary_key: crate::sas::generate_key()?,
            linked_hubs: Vec::new(),
            certificates: Vec::new(),
            created: self.clock.now(),
            presets: false,
        };
        self.store.put(kind::DPS, name, &dps)?;
        model.dps.insert(name.to_string(), dps.clone());
        Ok(dps)
    }

    /// Makes a DPS instance enforce Azure's rates (or stop), durably.
    pub fn set_dps_presets(&self, name: &str, presets: bool) -> Result<DpsRecord> {
        let mut model = self.write();
        let dps = model
            .dps
            .get_mut(name)
            .ok_or_else(|| not_found("provisioning service", name))?;
        let mut updated = dps.clone();
        updated.presets = presets;
        self.store.put(kind::DPS, name, &updated)?;
        *dps = updated.clone();
        Ok(updated)
    }

    /// Deletes a DPS instance with its enrollments and registration records.
    pub fn delete_dps(&self, name: &str) -> Result<()> {
        let mut model = self.write();
        if !model.dps.contains_key(name) {
            return Err(not_found("provisioning service", name));
        }
        let owned = |(d, _): &(String, String)| d == name;
        for (k, _) in model.groups.iter().filter(|(k, _)| owned(k)) {
            self.store
                .delete(kind::GROUP, &format!("{}/{}", k.0, k.1))?;
        }
        for (k, _) in model.enrollments.iter().filter(|(k, _)| owned(k)) {
            self.store
                .delete(kind::ENROLLMENT, &format!("{}/{}", k.0, k.1))?;
        }
        for (k, _) in model.registrations.iter().filter(|(k, _)| owned(k)) {
            self.store
                .delete(kind::REGISTRATION, &format!("{}/{}", k.0, k.1))?;
        }
        model
            .registry
            .drop_link(&self.store, super::device_registry::LinkedKind::Dps, name)?;
        self.store.delete(kind::DPS, name)?;
        model.groups.retain(|k, _| !owned(k));
        model.enrollments.retain(|k, _| !owned(k));
        model.registrations.retain(|k, _| !owned(k));
        model.dps.remove(name);
        Ok(())
    }

    /// A DPS instance by name.
    pub fn dps(&self, name: &str) -> Result<DpsRecord> {
        self.read()
            .dps
            .get(name)
            .cloned()
            .ok_or_else(|| not_found("provisioning service", name))
    }

    /// Every DPS instance.
    pub fn all_dps(&self) -> Vec<DpsRecord> {
        self.read().dps.values().cloned().collect()
    }

    /// Applies `change` to a DPS record and persists it.
    fn update_dps<T>(
        &self,
        name: &str,
        change: impl FnOnce(&mut DpsRecord, &Model) -> Result<T>,
    ) -> Result<T> {
        let mut model = self.write();
        let mut dps = model
            .dps
            .get(name)
            .cloned()
            .ok_or_else(|| not_found("provisioning service", name))?;
        let out = change(&mut dps, &model)?;
        self.store.put(kind::DPS, name, &dps)?;
        model.dps.insert(name.to_string(), dps);
        Ok(out)
    }

    /// Links a hub to a DPS (or updates the link's weight, policy flag and location).
    pub fn link_hub(
        &self,
        dps: &str,
        hub: &str,
        allocation_weight: u32,
        apply_allocation_policy: bool,
        location: Option<&str>,
    ) -> Result<LinkedHub> {
        self.update_dps(dps, |record, model| {
            let hub = model
                .hubs
                .get(hub)
                .ok_or_else(|| not_found("IoT hub", hub))?;
            let link = LinkedHub {
                hub: hub.name.clone(),
                host_name: hub.host_name.clone(),
                allocation_weight,
                apply_allocation_policy,
                location: location.unwrap_or(&hub.location).to_string(),
            };
            record.linked_hubs.retain(|l| l.hub != link.hub);
            record.linked_hubs.push(link.clone());
            Ok(link)
        })
    }

    /// Removes a hub link.
    pub fn unlink_hub(&self, dps: &str, hub: &str) -> Result<()> {
        self.update_dps(dps, |record, _| {
            let before = record.linked_hubs.len();
            record
                .linked_hubs
                .retain(|l| l.hub != hub && l.host_name != hub);
            if before == record.linked_hubs.len() {
                return Err(not_found("linked hub", hub));
            }
            Ok(())
        })
    }

    // ---- CA certificates and proof of possession ------------------------------------------

    /// Uploads (or, with a matching `if_match`, replaces) a CA certificate.
    pub fn upload_ca_certificate(
        &self,
        dps: &str,
        name: &str,
        certificate: &Certificate,
        verified: bool,
        if_match: Option<&str>,
    ) -> Result<CaCertificate> {
        crate::protocol::names::check_resource_name("certificate", name)?;
        self.update_dps(dps, |record, _| {
            let now = self.clock.now();
            let existing = record.certificates.iter().position(|c| c.name == name);
            let created = match existing {
                Some(i) => {
                    check_etag(&record.certificates[i].etag, if_match)?;
                    record.certificates[i].created
                }
                None => {
                    if record.certificates.len() >= 25 {
                        return Err(Error::service(
                            400,
                            400_004,
                            "A provisioning service holds at most 25 CA certificates.",
                        ));
                    }
                    now
                }
            };
            let ca = CaCertificate {
                name: name.to_string(),
                der_base64: BASE64.encode(certificate.der()),
                is_verified: verified,
                etag: new_etag(),
                verification_code: None,
                created,
                updated: now,
            };
            match existing {
                Some(i) => record.certificates[i] = ca.clone(),
                None => record.certificates.push(ca.clone()),
            }
            Ok(ca)
        })
    }

    /// A CA certificate of a DPS.
    pub fn ca_certificate(&self, dps: &str, name: &str) -> Result<CaCertificate> {
        self.dps(dps)?
            .certificates
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| not_found("certificate", name))
    }

    /// Deletes a CA certificate.
    pub fn delete_ca_certificate(
        &self,
        dps: &str,
        name: &str,
        if_match: Option<&str>,
    ) -> Result<()> {
        self.update_dps(dps, |record, _| {
            let i = record
                .certificates
                .iter()
                .position(|c| c.name == name)
                .ok_or_else(|| not_found("certificate", name))?;
            check_etag(&record.certificates[i].etag, if_match)?;
            record.certificates.remove(i);
            Ok(())
        })
    }

    /// Issues a new one-time verification code for a CA certificate (the previous one is
    /// invalidated) and returns it with the certificate's new etag.
    pub fn generate_verification_code(
        &self,
        dps: &str,
        name: &str,
        if_match: Option<&str>,
    ) -> Result<CaCertificate> {
        self.update_dps(dps, |record, _| {
            let ca = record
                .certificates
                .iter_mut()
                .find(|c| c.name == name)
                .ok_or_else(|| not_found("certificate", name))?;
            check_etag(&ca.etag, if_match)?;
            let mut bytes = [0u8; 24];
            crate::random::fill_random(&mut bytes)?;
            ca.verification_code = Some(crate::pki::cert::hex_upper(&bytes));
            ca.etag = new_etag();
            ca.updated = self.clock.now();
            Ok(ca.clone())
        })
    }

    /// Proof of possession: `verification` must have CN = the current code and be signed by the
    /// uploaded certificate's key. The code is used up on success.
    pub fn verify_certificate(
        &self,
        dps: &str,
        name: &str,
        verification: &Certificate,
        if_match: Option<&str>,
    ) -> Result<CaCertificate> {
        self.update_dps(dps, |record, _| {
            let ca = record
                .certificates
                .iter_mut()
                .find(|c| c.name == name)
                .ok_or_else(|| not_found("certificate", name))?;
            check_etag(&ca.etag, if_match)?;
            let code = ca.verification_code.clone().ok_or_else(|| {
                Error::service(
                    400,
                    400_027,
                    format!("No verification code was generated for certificate '{name}': generate one first."),
                )
            })?;
            let uploaded = decode_der(&ca.der_base64)?;
            let info = verification.info();
            if info.common_name.as_deref() != Some(code.as_str()) {
                return Err(Error::service(
                    400,
                    400_027,
                    format!(
                        "The verification certificate's subject CN '{}' is not the current verification code.",
                        info.common_name.as_deref().unwrap_or("")
                    ),
                ));
            }
            if !uploaded.is_issuer_name_of(verification) || !verification.is_signed_by(&uploaded) {
                return Err(Error::service(
                    400,
                    400_027,
                    format!(
                        "The verification certificate is not signed by the private key of certificate '{name}' ({}).",
                        uploaded.info().subject
                    ),
                ));
            }
            let t = self.clock.now();
            if t < info.not_before || t > info.not_after {
                return Err(Error::service(400, 400_027, "The verification certificate is not valid now."));
            }
            ca.is_verified = true;
            ca.verification_code = None;
            ca.etag = new_etag();
            ca.updated = t;
            Ok(ca.clone())
        })
    }

    // ---- enrollments --------------------------------------------------------------------

    fn check_hubs_linked(record: &DpsRecord, settings: &EnrollmentSettings) -> Result<()> {
        for host in &settings.iot_hubs {
            if !record
                .linked_hubs
                .iter()
                .any(|l| l.host_name.eq_ignore_ascii_case(host) || l.hub == *host)
            {
                return Err(Error::service(
                    400,
                    400_006,
                    format!(
                        "IoT hub '{host}' is not linked to provisioning service '{}'.",
                        record.name
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_attestation(record: &DpsRecord, attestation: &Attestation, group: bool) -> Result<()> {
        match attestation {
            Attestation::X509 {
                ca_references,
                certificates,
            } => {
                if ca_references.is_empty() && certificates.is_empty() {
                    return Err(Error::config(
                        "an X.509 enrollment needs a CA reference or a certificate",
                    ));
                }
                if !group && !ca_references.is_empty() {
                    return Err(Error::config(
                        "individual enrollments use the device's own certificate, not CA references",
                    ));
                }
                for name in ca_references {
                    if !record.certificates.iter().any(|c| &c.name == name) {
                        return Err(Error::service(
                            400,
                            400_007,
                            format!(
                                "CA certificate '{name}' is not uploaded to provisioning service '{}'.",
                                record.name
                            ),
                        ));
                    }
                }
                for der in certificates {
                    decode_der(der)?;
                }
                Ok(())
            }
            Attestation::SymmetricKey {
                primary_key,
                secondary_key,
            } => {
                crate::sas::validate_symmetric_key("the primary key", primary_key)?;
                crate::sas::validate_symmetric_key("the secondary key", secondary_key)
            }
        }
    }

    /// What a create-or-replace of an enrollment needs from the existing one: checks the etag
    /// (or that it exists when an etag is given), resolves the attestation (kept when the spec
    /// omits it), validates it and the hubs, and returns (attestation, created, now).
    fn prepare_put(
        &self,
        record: &DpsRecord,
        id: &str,
        existing: Option<(&str, &Attestation, i64)>,
        spec: &EnrollmentSpec,
        if_match: Option<&str>,
        group: bool,
    ) -> Result<(Attestation, i64, i64)> {
        let what = if group {
            "enrollment group"
        } else {
            "enrollment"
        };
        match existing {
            Some((etag, _, _)) => check_etag(etag, if_match)?,
            None if if_match.is_some_and(|t| t != "*") => return Err(not_found(what, id)),
            None => {}
        }
        let attestation = match (&spec.attestation, existing) {
            (Some(a), _) => a.clone(),
            (None, Some((_, a, _))) => a.clone(),
            (None, None) => {
                return Err(Error::config(format!("a new {what} needs an attestation")));
            }
        };
        Self::check_attestation(record, &attestation, group)?;
        Self::check_hubs_linked(record, &spec.settings)?;
        let t = self.clock.now();
        Ok((
            attestation,
            existing.map_or(t, |(_, _, created)| created),
            t,
        ))
    }

    /// Creates or replaces an enrollment group.
    pub fn put_enrollment_group(
        &self,
        dps: &str,
        group_id: &str,
        spec: EnrollmentSpec,
        if_match: Option<&str>,
    ) -> Result<EnrollmentGroup> {
        crate::protocol::names::check_resource_name("enrollment group", group_id)?;
        let mut model = self.write();
        let record = model
            .dps
            .get(dps)
            .ok_or_else(|| not_found("provisioning service", dps))?;
        let key = (dps.to_string(), group_id.to_string());
        let existing = model
            .groups
            .get(&key)
            .map(|e| (e.etag.as_str(), &e.attestation, e.created));
        let (attestation, created, t) =
            self.prepare_put(record, group_id, existing, &spec, if_match, true)?;
        let group = EnrollmentGroup {
            enrollment_group_id: group_id.to_string(),
            attestation,
            settings: spec.settings,
            etag: new_etag(),
            created,
            updated: t,
        };
        self.store
            .put(kind::GROUP, &format!("{dps}/{group_id}"), &(dps, &group))?;
        model.groups.insert(key, group.clone());
        Ok(group)
    }

    /// An enrollment group.
    pub fn enrollment_group(&self, dps: &str, group_id: &str) -> Result<EnrollmentGroup> {
        lookup(&self.read().groups, dps, group_id, "enrollment group")
    }

    /// Every enrollment group of a DPS.
    pub fn enrollment_groups(&self, dps: &str) -> Vec<EnrollmentGroup> {
        of_dps(&self.read().groups, dps)
    }

    /// Deletes an enrollment group.
    pub fn delete_enrollment_group(
        &self,
        dps: &str,
        group_id: &str,
        if_match: Option<&str>,
    ) -> Result<()> {
        let mut model = self.write();
        let (key, store_key) = (
            (dps.to_string(), group_id.to_string()),
            format!("{dps}/{group_id}"),
        );
        check_removable(
            &model.groups,
            &key,
            |g| &g.etag,
            if_match,
            "enrollment group",
            group_id,
        )?;
        // Store first: a failed write leaves both views as they were.
        self.store.delete(kind::GROUP, &store_key)?;
        model.groups.remove(&key);
        Ok(())
    }

    /// Creates or replaces an individual enrollment.
    pub fn put_enrollment(
        &self,
        dps: &str,
        registration_id: &str,
        spec: EnrollmentSpec,
        if_match: Option<&str>,
    ) -> Result<IndividualEnrollment> {
        crate::pki::validate_registration_id(registration_id, false)?;
        if let Some(device_id) = &spec.device_id {
            validate_device_id(device_id)?;
        }
        let mut model = self.write();
        let record = model
            .dps
            .get(dps)
            .ok_or_else(|| not_found("provisioning service", dps))?;
        let key = (dps.to_string(), registration_id.to_ascii_lowercase());
        let existing = model
            .enrollments
            .get(&key)
            .map(|e| (e.etag.as_str(), &e.attestation, e.created));
        let (attestation, created, t) =
            self.prepare_put(record, registration_id, existing, &spec, if_match, false)?;
        let enrollment = IndividualEnrollment {
            registration_id: registration_id.to_string(),
            device_id: spec.device_id,
            attestation,
            settings: spec.settings,
            etag: new_etag(),
            created,
            updated: t,
        };
        self.store.put(
            kind::ENROLLMENT,
            &format!("{dps}/{}", key.1),
            &(dps, &enrollment),
        )?;
        model.enrollments.insert(key, enrollment.clone());
        Ok(enrollment)
    }

    /// An individual enrollment.
    pub fn enrollment(&self, dps: &str, registration_id: &str) -> Result<IndividualEnrollment> {
        lookup(
            &self.read().enrollments,
            dps,
            &registration_id.to_ascii_lowercase(),
            "enrollment",
        )
    }

    /// Every individual enrollment of a DPS.
    pub fn enrollments(&self, dps: &str) -> Vec<IndividualEnrollment> {
        of_dps(&self.read().enrollments, dps)
    }

    /// Deletes an individual enrollment.
    pub fn delete_enrollment(
        &self,
        dps: &str,
        registration_id: &str,
        if_match: Option<&str>,
    ) -> Result<()> {
        let mut model = self.write();
        let id = registration_id.to_ascii_lowercase();
        let store_key = format!("{dps}/{id}");
        let key = (dps.to_string(), id);
        check_removable(
            &model.enrollments,
            &key,
            |e| &e.etag,
            if_match,
            "enrollment",
            registration_id,
        )?;
        self.store.delete(kind::ENROLLMENT, &store_key)?;
        model.enrollments.remove(&key);
        Ok(())
    }

    // ---- registrations --------------------------------------------------------------------

    /// Registration records of a DPS, optionally only those of one enrollment group.
    pub fn registrations(&self, dps: &str, group_id: Option<&str>) -> Vec<RegistrationRecord> {
        self.read()
            .registrations
            .iter()
            .filter(|((d, _), r)| {
                d == dps
                    && group_id.is_none_or(|g| r.enrollment == EnrollmentRef::Group(g.to_string()))
            })
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// One registration record.
    pub fn registration(&self, dps: &str, registration_id: &str) -> Option<RegistrationRecord> {
        self.read()
            .registrations
            .get(&(dps.to_string(), registration_id.to_ascii_lowercase()))
            .cloned()
    }

    /// Deletes a registration record (the device may then register afresh).
    pub fn delete_registration(&self, dps: &str, registration_id: &str) -> Result<()> {
        let key = (dps.to_string(), registration_id.to_ascii_lowercase());
        let mut model = self.write();
        if model.registrations.remove(&key).is_none() {
            return Err(not_found("registration", registration_id));
        }
        self.store
            .delete(kind::REGISTRATION, &format!("{dps}/{}", key.1))?;
        Ok(())
    }

    /// Stores a registration record and the hub identity it created, in one transaction.
    pub(crate) fn commit_registration(
        &self,
        dps: &str,
        record: RegistrationRecord,
        device: Option<HubDevice>,
    ) -> Result<()> {
        let key = (dps.to_string(), record.registration_id.to_ascii_lowercase());
        let encode = |v: &dyn erased::Json| v.to_json();
        let mut documents = vec![(
            kind::REGISTRATION,
            format!("{dps}/{}", key.1),
            encode(&(dps, &record))?,
        )];
        if let Some(device) = &device {
            documents.push((
                kind::DEVICE,
                format!("{}/{}", device.hub, device.device_id),
                encode(device)?,
            ));
        }
        self.store.put_many(&documents)?;
        let mut model = self.write();
        model.registrations.insert(key, record);
        if let Some(device) = device {
            model
                .devices
                .insert((device.hub.clone(), device.device_id.clone()), device);
        }
        Ok(())
    }
}

type Table<T> = BTreeMap<(String, String), T>;

/// A record of a per-DPS table, or Azure's 404.
/// The policies Azure creates with every hub, with their rights as ARM lists them;
/// `iothubowner` takes the given keys, the others fresh random ones.
pub(crate) fn default_hub_policies(
    owner_primary: &str,
    owner_secondary: &str,
) -> Result<Vec<SharedAccessPolicy>> {
    let mut policies = vec![SharedAccessPolicy {
        key_name: "iothubowner".into(),
        primary_key: owner_primary.to_string(),
        secondary_key: owner_secondary.to_string(),
        rights: "RegistryWrite, ServiceConnect, DeviceConnect".into(),
    }];
    for (name, rights) in [
        ("service", "ServiceConnect"),
        ("device", "DeviceConnect"),
        ("registryRead", "RegistryRead"),
        ("registryReadWrite", "RegistryWrite"),
    ] {
        policies.push(SharedAccessPolicy {
            key_name: name.into(),
            primary_key: crate::sas::generate_key()?,
            secondary_key: crate::sas::generate_key()?,
            rights: rights.into(),
        });
    }
    Ok(policies)
}

/// The clock a data folder keeps, moved forward to `start_time` when one is given (and that
/// start kept).
fn open_clock(store: &Store, start_time: Option<i64>) -> Result<Clock> {
    let stored: Option<i64> = store.get(kind::CLOCK, CLOCK_KEY)?;
    let clock = Clock::with_offset_ms(stored.unwrap_or(0))?;
    let Some(start) = start_time else {
        return Ok(clock);
    };
    let wanted = start
        .checked_mul(1000)
        .and_then(|ms| ms.checked_sub(crate::clock::now_ms()))
        .ok_or_else(|| Error::config("the clock's start time is out of range"))?;
    match stored {
        // A new folder starts where it is told, in the past or the future.
        None => {
            let clock = Clock::with_offset_ms(wanted)?;
            store.put(kind::CLOCK, CLOCK_KEY, &wanted)?;
            Ok(clock)
        }
        Some(offset) if wanted >= offset => {
            clock.advance_ms(wanted - offset)?;
            store.put(kind::CLOCK, CLOCK_KEY, &wanted)?;
            Ok(clock)
        }
        Some(_) => Err(Error::config(format!(
            "this data folder's clock is already past {}: time only moves forward",
            azure_time(start)
        ))),
    }
}

fn lookup<T: Clone>(table: &Table<T>, dps: &str, id: &str, what: &str) -> Result<T> {
    table
        .get(&(dps.to_string(), id.to_string()))
        .cloned()
        .ok_or_else(|| not_found(what, id))
}

/// Every record of one DPS in a per-DPS table.
fn of_dps<T: Clone>(table: &Table<T>, dps: &str) -> Vec<T> {
    table
        .iter()
        .filter(|((d, _), _)| d == dps)
        .map(|(_, v)| v.clone())
        .collect()
}

/// Checks that a record exists and that `if_match` matches its etag, before deleting it.
fn check_removable<T>(
    table: &Table<T>,
    key: &(String, String),
    etag: impl Fn(&T) -> &str,
    if_match: Option<&str>,
    what: &str,
    id: &str,
) -> Result<()> {
    let record = table.get(key).ok_or_else(|| not_found(what, id))?;
    check_etag(etag(record), if_match)
}

/// Decodes a stored base64 DER certificate.
pub(crate) fn decode_der(der_base64: &str) -> Result<Certificate> {
    let der = BASE64
        .decode(der_base64)
        .map_err(|_| Error::config("certificate is not valid base64 DER"))?;
    Certificate::from_der(&der)
}

mod erased {
    use crate::error::{Error, Result};

    /// Serialises heterogeneous records for one transaction.
    pub(super) trait Json {
        fn to_json(&self) -> Result<String>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Result<String> {
            serde_json::to_string(self)
                .map_err(|e| Error::emulator_caused("state store: cannot encode a record", e))
        }
    }
}
