//! The catalogue of what DPS, IoT Hub, MQTT CONNACK and TLS errors mean, and the reader that
//! finds one in any SDK's text (`explain`): a bare code, a JSON body, an HTTP status, a
//! CONNACK return code, a TLS library's words, an SDK's own message. Each entry lists its
//! likely causes most likely first, each tied to the `Cause` a doctor check names where one
//! fits, so the traced attempt (`causes_for`) and `dpskit doctor error` agree. Sources: the
//! wire-protocol notes (§1.7 codes, §1.8 CONNECT refusals, §6.1 X.509 rules, §9 pitfalls with
//! their error signatures) and IoT Hub's documented error codes.

use serde::Serialize;

use super::Cause;

/// Which part of the system an error comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// The Device Provisioning Service.
    Dps,
    /// IoT Hub.
    Hub,
    /// The MQTT broker's CONNACK.
    Mqtt,
    /// The TLS handshake.
    Tls,
    /// An Azure IoT SDK's own wording.
    Sdk,
}

impl Service {
    /// The name printed and sent to Python (`dps`, `hub`, `mqtt`, `tls`, `sdk`).
    pub fn name(self) -> &'static str {
        match self {
            Service::Dps => "dps",
            Service::Hub => "hub",
            Service::Mqtt => "mqtt",
            Service::Tls => "tls",
            Service::Sdk => "sdk",
        }
    }
}

/// One likely cause: the sentence a user reads and the classic cause it is, if one fits.
type Likely = (&'static str, Option<Cause>);

/// One catalogue entry.
#[derive(Debug)]
pub struct Entry {
    /// Azure's six-digit error code (status × 1000 + sub-code), when the entry has one.
    pub code: Option<u32>,
    /// The HTTP status, or for `Service::Mqtt` the CONNACK return code.
    pub status: Option<u16>,
    /// Where the error comes from.
    pub service: Service,
    /// Its name in a few words.
    pub title: &'static str,
    /// What it means.
    pub meaning: &'static str,
    /// The likely causes, most likely first.
    pub causes: &'static [Likely],
}

use Cause as C;

// The causes of DPS's 401002, in the order users meet them (§9): a chain not sent is by far
// the most common, then the CA not verified, then a group that names another CA.
const UNAUTHORIZED_X509: &[Likely] = &[
    (
        "The device sends only its leaf certificate, not the intermediates up to the CA its enrollment group names.",
        Some(C::MissingIntermediate),
    ),
    (
        "The CA certificate the enrollment group relies on is uploaded to DPS but not verified (proof of possession).",
        Some(C::UnverifiedCa),
    ),
    (
        "No enrollment group names a CA of the device's chain (the group names a different CA).",
        Some(C::WrongCaInGroup),
    ),
    (
        "The leaf's CN is not the registration id the device registers with.",
        Some(C::CnMismatch),
    ),
    ("The device certificate has expired.", Some(C::ExpiredLeaf)),
    (
        "An intermediate CA certificate of the chain has expired.",
        Some(C::ExpiredIntermediate),
    ),
    (
        "The enrollment DPS picks for the device is disabled.",
        Some(C::DisabledEnrollment),
    ),
    (
        "The chain is sent out of order (it must be leaf first, each certificate followed by its issuer).",
        Some(C::ChainOrder),
    ),
    (
        "The device loads a PKCS#12 file that holds no intermediates, so its TLS stack cannot send them.",
        Some(C::Pkcs12WithoutChain),
    ),
    (
        "An individual enrollment for this registration id exists and names another certificate.",
        Some(C::IndividualEnrollmentMismatch),
    ),
    (
        "A certificate is not valid yet, or the device's clock is wrong.",
        Some(C::NotYetValid),
    ),
    (
        "Bursty provisioning: the same certificate sometimes passes; pace registrations (1000/min) and retry.",
        None,
    ),
];

const CA_NOT_FOUND: &[Likely] = &[
    UNAUTHORIZED_X509[0],
    UNAUTHORIZED_X509[1],
    UNAUTHORIZED_X509[2],
    UNAUTHORIZED_X509[8],
    UNAUTHORIZED_X509[7],
    UNAUTHORIZED_X509[5],
];

const CHAIN_MISMATCH: &[Likely] = &[
    (
        "The group's certificate is not in the chain the device presents (it names a different CA, or the CA itself was used as the device certificate).",
        Some(C::WrongCaInGroup),
    ),
    UNAUTHORIZED_X509[7],
    UNAUTHORIZED_X509[0],
];

const HUB_AUTH: &[Likely] = &[
    (
        "The hub identity does not hold this certificate's thumbprint (the certificate was renewed without re-provisioning, or the device connects with another certificate).",
        Some(C::HubIdentityMismatch),
    ),
    (
        "The hub identity DPS created is disabled.",
        Some(C::HubIdentityDisabled),
    ),
    ("The device certificate has expired.", Some(C::ExpiredLeaf)),
    (
        "A SAS token has expired, is signed with the wrong key, or (with a group key) the device key was not derived from the group key.",
        None,
    ),
];

const NO_HUB: &[Likely] = &[
    (
        "The enrollment has no linked IoT hub to assign the device to (none linked to the DPS, or the enrollment's hubs are not linked).",
        Some(C::NoLinkedHub),
    ),
    ("A custom allocation webhook returned no hub.", None),
];

const NO_ENROLLMENT: &[Likely] = &[
    (
        "No enrollment matches the device: no group names a CA of its chain.",
        Some(C::WrongCaInGroup),
    ),
    (
        "The individual enrollment is for another registration id or certificate.",
        Some(C::IndividualEnrollmentMismatch),
    ),
    (
        "The leaf's CN is not the registration id enrolled.",
        Some(C::CnMismatch),
    ),
    (
        "The device registers with a different ID scope (another DPS).",
        None,
    ),
];

const SERVER_UNTRUSTED: &[Likely] = &[
    (
        "The device's trust bundle holds only the retired Baltimore CyberTrust Root; Azure's servers chain to DigiCert Global Root G2 now.",
        Some(C::StaleTrustBundle),
    ),
    (
        "The device's trust bundle lacks the root the server chains to (for the emulator: its own CA, `trust_pem`).",
        Some(C::UntrustedServer),
    ),
    (
        "The host name dialled is not in the server certificate (a SAN is needed for the name used).",
        None,
    ),
    (
        "A proxy or firewall intercepts TLS with its own certificate.",
        None,
    ),
];

const CLIENT_CERT_REFUSED: &[Likely] = &[
    (
        "The leaf is a CA certificate, or its key usage or extended key usage forbids client authentication.",
        Some(C::UnfitLeaf),
    ),
    (
        "The key or signature algorithm is not accepted (RSA below 2048 bits, SHA-1, an unusual curve).",
        Some(C::UnsupportedAlgorithm),
    ),
    (
        "The private key does not belong to the certificate sent.",
        Some(C::KeyMismatch),
    ),
    ("The device certificate has expired.", Some(C::ExpiredLeaf)),
];

const UNREACHABLE: &[Likely] = &[
    (
        "The host or port is wrong, or a firewall blocks outbound 8883 (MQTT) or 443 (WebSockets, HTTPS).",
        Some(C::Unreachable),
    ),
    (
        "The service is briefly unavailable; retry with backoff.",
        None,
    ),
];

const RETRY: &[Likely] = &[(
    "A transient service condition: retry with exponential backoff, honouring retry-after.",
    None,
)];

const THROTTLED: &[Likely] = &[(
    "Too many requests: DPS allows 1000 registrations/min per service and 5 polls per 10 s per device; IoT Hub throttles per unit. Back off, honouring retry-after.",
    None,
)];

/// Every entry with a code or status. Codes are looked up first, then statuses.
pub static CATALOGUE: &[Entry] = &[
    // -- DPS --------------------------------------------------------------------------------
    Entry {
        code: Some(401_002),
        status: Some(401),
        service: Service::Dps,
        title: "Unauthorized (X.509 attestation failed)",
        meaning: "DPS accepted the TLS connection but refused the registration: the certificate chain the device sent does not lead to an enabled enrollment with a verified CA. IoT Hub uses the same code (IoTHubUnauthorizedAccess) when it refuses a device's credentials.",
        causes: UNAUTHORIZED_X509,
    },
    Entry {
        code: Some(401_000),
        status: Some(401),
        service: Service::Dps,
        title: "Unauthorized",
        meaning: "DPS refused the device's credentials without saying more.",
        causes: UNAUTHORIZED_X509,
    },
    Entry {
        code: Some(404_201),
        status: Some(404),
        service: Service::Dps,
        title: "No enrollment for this device",
        meaning: "DPS found no enrollment (or registration) for this registration id.",
        causes: NO_ENROLLMENT,
    },
    Entry {
        code: Some(400_208),
        status: Some(400),
        service: Service::Dps,
        title: "No IoT hub to assign",
        meaning: "DPS attested the device but has no linked IoT hub to assign it to (the C SDK's PROV_DEVICE_RESULT_HUB_NOT_SPECIFIED).",
        causes: NO_HUB,
    },
    Entry {
        code: Some(400_209),
        status: Some(400),
        service: Service::Dps,
        title: "DPS is not authorized on the hub",
        meaning: "DPS could not create the device in the assigned hub: the linked hub's access policy or key is no longer valid (the C SDK reports PROV_DEVICE_RESULT_UNAUTHORIZED).",
        causes: &[
            (
                "The linked hub's connection string (shared access key) was regenerated or removed: re-link the hub to DPS.",
                Some(C::NoLinkedHub),
            ),
            (
                "The hub's registry write quota is exhausted or the hub is disabled.",
                None,
            ),
        ],
    },
    Entry {
        code: Some(400_004),
        status: Some(400),
        service: Service::Hub,
        title: "Invalid argument",
        meaning: "The request's arguments are invalid (ArgumentInvalid): a malformed body, device id, registration id or CSR. DPS answers it too for a request it cannot take.",
        causes: &[
            (
                "The registration id (the leaf's CN) is not valid: up to 128 lower-case letters, digits and - . _ :.",
                Some(C::InvalidRegistrationId),
            ),
            (
                "The request body or a CSR is malformed, or the api-version too old for it.",
                None,
            ),
        ],
    },
    // -- IoT Hub ----------------------------------------------------------------------------
    Entry {
        code: Some(401_003),
        status: Some(401),
        service: Service::Hub,
        title: "IoT Hub unauthorized",
        meaning: "IoT Hub refused the device's credentials (IoTHubUnauthorized).",
        causes: HUB_AUTH,
    },
    Entry {
        code: Some(403_002),
        status: Some(403),
        service: Service::Hub,
        title: "IoT Hub quota exceeded",
        meaning: "The hub's daily message quota is used up (IotHubQuotaExceeded).",
        causes: &[(
            "The hub's tier and units allow fewer messages a day than were sent: wait for the reset or add units.",
            None,
        )],
    },
    Entry {
        code: Some(403_004),
        status: Some(403),
        service: Service::Hub,
        title: "Device queue full",
        meaning: "The device's cloud-to-device queue holds its maximum of 50 messages (DeviceMaximumQueueDepthExceeded).",
        causes: &[(
            "The device does not receive (or complete) its cloud-to-device messages.",
            None,
        )],
    },
    Entry {
        code: Some(404_001),
        status: Some(404),
        service: Service::Hub,
        title: "Device not found",
        meaning: "The hub has no identity with this device id (DeviceNotFound).",
        causes: &[
            (
                "The device connects to a different hub than the one DPS assigned, or with another device id.",
                None,
            ),
            (
                "The identity was deleted from the hub: provision the device again.",
                None,
            ),
        ],
    },
    Entry {
        code: Some(404_103),
        status: Some(404),
        service: Service::Hub,
        title: "Device not online",
        meaning: "A direct method was invoked on a device that is not connected (DeviceNotOnline).",
        causes: &[(
            "The device is offline, or has not subscribed to direct methods.",
            None,
        )],
    },
    Entry {
        code: Some(409_001),
        status: Some(409),
        service: Service::Hub,
        title: "Device already exists",
        meaning: "An identity with this id already exists (DeviceAlreadyExists).",
        causes: &[(
            "The device was created earlier; update it instead, or use another id.",
            None,
        )],
    },
    Entry {
        code: Some(409_002),
        status: Some(409),
        service: Service::Hub,
        title: "Link creation conflict",
        meaning: "Another connection for the same device replaced this one (LinkCreationConflict).",
        causes: &[(
            "Two clients connect with the same device id and take turns closing each other's connection.",
            None,
        )],
    },
    Entry {
        code: Some(412_002),
        status: Some(412),
        service: Service::Hub,
        title: "Precondition failed",
        meaning: "The request's etag no longer matches the stored one (PreconditionFailed).",
        causes: &[(
            "The resource changed since it was read: read it again and retry with the new etag.",
            None,
        )],
    },
    Entry {
        code: Some(429_001),
        status: Some(429),
        service: Service::Hub,
        title: "Throttled",
        meaning: "Too many requests (ThrottlingException); DPS answers 429 the same way.",
        causes: THROTTLED,
    },
    Entry {
        code: Some(429_002),
        status: Some(429),
        service: Service::Hub,
        title: "Throttling backlog timeout",
        meaning: "Throttled requests waited too long in the hub's queue (ThrottlingBacklogTimeout).",
        causes: THROTTLED,
    },
    Entry {
        code: Some(429_003),
        status: Some(429),
        service: Service::Hub,
        title: "Too many active jobs",
        meaning: "The hub runs its maximum number of jobs (ThrottlingMaxActiveJobCountExceeded).",
        causes: &[("Wait for running jobs to finish, or cancel some.", None)],
    },
    Entry {
        code: Some(500_001),
        status: Some(500),
        service: Service::Hub,
        title: "Server error",
        meaning: "An internal error in the service (ServerError).",
        causes: RETRY,
    },
    Entry {
        code: Some(503_003),
        status: Some(503),
        service: Service::Hub,
        title: "Partition not found",
        meaning: "The service is briefly unavailable (PartitionNotFound).",
        causes: RETRY,
    },
    Entry {
        code: Some(504_101),
        status: Some(504),
        service: Service::Hub,
        title: "Gateway timeout",
        meaning: "The service did not answer in time (GatewayTimeout).",
        causes: RETRY,
    },
    // -- HTTP statuses (DPS's device API uses them as its MQTT status) -------------------------
    Entry {
        code: None,
        status: Some(400),
        service: Service::Dps,
        title: "Bad request",
        meaning: "The service could not take the request as sent.",
        causes: &[
            (
                "The registration id (the leaf's CN) is not valid.",
                Some(C::InvalidRegistrationId),
            ),
            NO_HUB[0],
            ("The request body is malformed.", None),
        ],
    },
    Entry {
        code: None,
        status: Some(401),
        service: Service::Dps,
        title: "Unauthorized",
        meaning: "The service refused the device's credentials.",
        causes: UNAUTHORIZED_X509,
    },
    Entry {
        code: None,
        status: Some(403),
        service: Service::Dps,
        title: "Forbidden",
        meaning: "The credentials are valid but not allowed to do this, or a quota is used up.",
        causes: &[
            (
                "The enrollment or hub identity is disabled.",
                Some(C::DisabledEnrollment),
            ),
            ("A quota of the service is used up.", None),
        ],
    },
    Entry {
        code: None,
        status: Some(404),
        service: Service::Dps,
        title: "Not found",
        meaning: "The service knows no such enrollment, registration or device.",
        causes: &[
            NO_ENROLLMENT[0],
            NO_HUB[0],
            NO_ENROLLMENT[1],
            NO_ENROLLMENT[3],
        ],
    },
    Entry {
        code: None,
        status: Some(405),
        service: Service::Dps,
        title: "Method not allowed",
        meaning: "The request's method or route is wrong (a wrong host, ID scope or api-version).",
        causes: &[("The client library or endpoint is misconfigured.", None)],
    },
    Entry {
        code: None,
        status: Some(409),
        service: Service::Dps,
        title: "Conflict",
        meaning: "The resource exists already or is being changed.",
        causes: &[(
            "Another operation on the same resource is in progress.",
            None,
        )],
    },
    Entry {
        code: None,
        status: Some(412),
        service: Service::Dps,
        title: "Precondition failed",
        meaning: "An etag did not match.",
        causes: &[("Read the resource again and retry with its etag.", None)],
    },
    Entry {
        code: None,
        status: Some(415),
        service: Service::Dps,
        title: "Unsupported media type",
        meaning: "The request's content type is not accepted.",
        causes: &[("Send application/json.", None)],
    },
    Entry {
        code: None,
        status: Some(429),
        service: Service::Dps,
        title: "Throttled",
        meaning: "Too many requests.",
        causes: THROTTLED,
    },
    Entry {
        code: None,
        status: Some(500),
        service: Service::Dps,
        title: "Internal server error",
        meaning: "The service failed; the SDKs retry.",
        causes: RETRY,
    },
    Entry {
        code: None,
        status: Some(503),
        service: Service::Dps,
        title: "Service unavailable",
        meaning: "The service is briefly unavailable; the SDKs retry.",
        causes: RETRY,
    },
    // -- MQTT CONNACK return codes (MQTT 3.1.1) ----------------------------------------------
    Entry {
        code: None,
        status: Some(1),
        service: Service::Mqtt,
        title: "CONNACK 1: unacceptable protocol version",
        meaning: "The broker refused the MQTT protocol level (Azure needs MQTT 3.1.1).",
        causes: &[("The client speaks MQTT 3.1 or 5; use 3.1.1.", None)],
    },
    Entry {
        code: None,
        status: Some(2),
        service: Service::Mqtt,
        title: "CONNACK 2: identifier rejected",
        meaning: "The broker refused the client id (for DPS the registration id, for IoT Hub the device id).",
        causes: &[(
            "The client id is not a valid registration or device id.",
            Some(C::InvalidRegistrationId),
        )],
    },
    Entry {
        code: None,
        status: Some(3),
        service: Service::Mqtt,
        title: "CONNACK 3: server unavailable",
        meaning: "The broker is briefly unavailable.",
        causes: RETRY,
    },
    Entry {
        code: None,
        status: Some(4),
        service: Service::Mqtt,
        title: "CONNACK 4: bad user name or password",
        meaning: "The broker refused the CONNECT's user name or password (a SAS token).",
        causes: &[
            (
                "The user name is not `{idScope}/registrations/{registrationId}/api-version=...` (DPS) or `{hub}/{deviceId}/?api-version=...` (IoT Hub).",
                None,
            ),
            HUB_AUTH[3],
            (
                "The leaf's CN is not the registration id in the user name.",
                Some(C::CnMismatch),
            ),
        ],
    },
    Entry {
        code: None,
        status: Some(5),
        service: Service::Mqtt,
        title: "CONNACK 5: not authorized",
        meaning: "The broker refused the device at CONNECT (the Python SDK raises CredentialError(\"Credentials invalid, could not connect\")).",
        causes: &[
            HUB_AUTH[0],
            HUB_AUTH[1],
            HUB_AUTH[2],
            HUB_AUTH[3],
            (
                "The leaf's CN is not the device or registration id it connects as.",
                Some(C::CnMismatch),
            ),
        ],
    },
];

/// Entries found by wording only (TLS libraries, SDK messages).
static TLS_SERVER_UNTRUSTED: Entry = Entry {
    code: None,
    status: None,
    service: Service::Tls,
    title: "The server's certificate is not trusted",
    meaning: "The device's TLS stack could not verify the server's certificate against the CAs it trusts, so it stopped before sending anything.",
    causes: SERVER_UNTRUSTED,
};

static TLS_SERVER_EXPIRED: Entry = Entry {
    code: None,
    status: None,
    service: Service::Tls,
    title: "The server's certificate is outside its validity",
    meaning: "The device's TLS stack judged the server's certificate expired or not yet valid.",
    causes: &[
        (
            "The device's clock is wrong (no time source after boot).",
            None,
        ),
        SERVER_UNTRUSTED[0],
        SERVER_UNTRUSTED[1],
    ],
};

static TLS_CLIENT_EXPIRED: Entry = Entry {
    code: None,
    status: None,
    service: Service::Tls,
    title: "The device's certificate has expired",
    meaning: "The server refused the device's certificate during the handshake because it (or a CA above it) is outside its validity.",
    causes: &[
        ("The device certificate has expired.", Some(C::ExpiredLeaf)),
        UNAUTHORIZED_X509[5],
        UNAUTHORIZED_X509[10],
    ],
};

static TLS_HANDSHAKE: Entry = Entry {
    code: None,
    status: None,
    service: Service::Tls,
    title: "TLS handshake failure",
    meaning: "The client and server could not agree: no common protocol version or cipher, or the server refused the device's certificate.",
    causes: &[
        CLIENT_CERT_REFUSED[1],
        CLIENT_CERT_REFUSED[0],
        CLIENT_CERT_REFUSED[2],
        (
            "The device offers only TLS 1.0/1.1; Azure requires TLS 1.2 or later.",
            None,
        ),
    ],
};

static TLS_BAD_CERTIFICATE: Entry = Entry {
    code: None,
    status: None,
    service: Service::Tls,
    title: "The server refused the device's certificate",
    meaning: "The server sent a TLS alert about the certificate the device presented.",
    causes: CLIENT_CERT_REFUSED,
};

static TLS_UNKNOWN_CA: Entry = Entry {
    code: None,
    status: None,
    service: Service::Tls,
    title: "Unknown CA",
    meaning: "A TLS alert: a peer does not know the CA a certificate chains to (a device that gets it from a server: the server refused the device's chain).",
    causes: &[
        UNAUTHORIZED_X509[0],
        UNAUTHORIZED_X509[7],
        SERVER_UNTRUSTED[1],
    ],
};

static CA_NOT_FOUND_ENTRY: Entry = Entry {
    code: Some(401_002),
    status: Some(401),
    service: Service::Dps,
    title: "CA certificate not found",
    meaning: "DPS found no verified CA of an enrollment group in the chain the device sent (401002).",
    causes: CA_NOT_FOUND,
};

static INVALID_CERTIFICATE: Entry = Entry {
    code: Some(401_002),
    status: Some(401),
    service: Service::Dps,
    title: "Invalid certificate",
    meaning: "DPS refused the device's certificate (401002; the C SDK's wording): its chain does not reach a verified CA of an enrollment, or it is outside its validity.",
    causes: &[
        UNAUTHORIZED_X509[0],
        UNAUTHORIZED_X509[1],
        UNAUTHORIZED_X509[4],
        UNAUTHORIZED_X509[5],
        UNAUTHORIZED_X509[2],
        UNAUTHORIZED_X509[9],
        UNAUTHORIZED_X509[7],
    ],
};

static SIGNING_MISMATCH: Entry = Entry {
    code: Some(401_002),
    status: Some(401),
    service: Service::Dps,
    title: "Signing certificate did not match the chain",
    meaning: "DPS could not find the enrollment group's certificate among the chain elements the device sent (401002).",
    causes: CHAIN_MISMATCH,
};

static PYTHON_UNEXPECTED_FAILURE: Entry = Entry {
    code: None,
    status: None,
    service: Service::Sdk,
    title: "Unexpected failure (Python SDK)",
    meaning: "azure-iot-device's ProvisioningDeviceClient.register() wraps every refusal with a status from 300 to 428 in ClientError(\"Unexpected failure\"); the status is in the ServiceError it was caused by (__cause__): 'register request returned a service error status code N'. An expired certificate is the classic one (401).",
    causes: UNAUTHORIZED_X509,
};

static C_UNAUTHORIZED: Entry = Entry {
    code: None,
    status: None,
    service: Service::Sdk,
    title: "PROV_DEVICE_RESULT_UNAUTHORIZED (C SDK)",
    meaning: "The C SDK's result for a registration DPS refused as unauthorized (401, or 400209 when DPS could not write to the hub).",
    causes: &[
        UNAUTHORIZED_X509[0],
        UNAUTHORIZED_X509[1],
        UNAUTHORIZED_X509[2],
        UNAUTHORIZED_X509[3],
        UNAUTHORIZED_X509[4],
        UNAUTHORIZED_X509[6],
        (
            "DPS could not create the device in the linked hub (400209): re-link the hub.",
            Some(C::NoLinkedHub),
        ),
    ],
};

static C_HUB_NOT_SPECIFIED: Entry = Entry {
    code: Some(400_208),
    status: Some(400),
    service: Service::Sdk,
    title: "PROV_DEVICE_RESULT_HUB_NOT_SPECIFIED (C SDK)",
    meaning: "The C SDK's result for 400208: DPS attested the device but had no hub to assign.",
    causes: NO_HUB,
};

static CONNECTION_DROPPED: Entry = Entry {
    code: None,
    status: None,
    service: Service::Sdk,
    title: "The server closed the connection",
    meaning: "The connection dropped without an answer (Paho's rc==1 is an unexpected disconnect, not a CONNACK). Right after the register request this is how some SDKs report a refused chain; elsewhere it is the network.",
    causes: &[
        UNAUTHORIZED_X509[0],
        UNAUTHORIZED_X509[8],
        UNAUTHORIZED_X509[7],
        UNREACHABLE[0],
        (
            "Another client connected with the same id and replaced this connection.",
            None,
        ),
    ],
};

static UNREACHABLE_ENTRY: Entry = Entry {
    code: None,
    status: None,
    service: Service::Sdk,
    title: "The endpoint cannot be reached",
    meaning: "No connection was made: the name does not resolve, the port is closed, or the network blocks it.",
    causes: UNREACHABLE,
};

static TIMEOUT_ENTRY: Entry = Entry {
    code: None,
    status: None,
    service: Service::Sdk,
    title: "Operation timed out",
    meaning: "No answer came in time (the Python SDK gives each register or poll 30 s).",
    causes: &[
        UNREACHABLE[0],
        (
            "The service is slow or throttling; retry with backoff.",
            None,
        ),
    ],
};

/// Wording that names an entry more precisely than any number in the same text, checked
/// before codes and statuses (lower-case; the first match wins).
static STRONG_PHRASES: &[(&str, &Entry)] = &[
    ("ca certificate not found", &CA_NOT_FOUND_ENTRY),
    ("signing certificate info did not match", &SIGNING_MISMATCH),
    ("did not match chain elements", &SIGNING_MISMATCH),
    ("prov_device_result_hub_not_specified", &C_HUB_NOT_SPECIFIED),
    (
        "certificate verify failed: certificate has expired",
        &TLS_SERVER_EXPIRED,
    ),
    (
        "certificate verify failed: certificate is not yet valid",
        &TLS_SERVER_EXPIRED,
    ),
    ("certificate_verify_failed", &TLS_SERVER_UNTRUSTED),
    ("certificate verify failed", &TLS_SERVER_UNTRUSTED),
    (
        "unable to get local issuer certificate",
        &TLS_SERVER_UNTRUSTED,
    ),
    (
        "self signed certificate in certificate chain",
        &TLS_SERVER_UNTRUSTED,
    ),
    (
        "self-signed certificate in certificate chain",
        &TLS_SERVER_UNTRUSTED,
    ),
    ("unknownissuer", &TLS_SERVER_UNTRUSTED),
    ("unknown issuer", &TLS_SERVER_UNTRUSTED),
    ("signed by unknown authority", &TLS_SERVER_UNTRUSTED),
    ("remote certificate is invalid", &TLS_SERVER_UNTRUSTED),
    ("untrustedroot", &TLS_SERVER_UNTRUSTED),
    ("pkix path building failed", &TLS_SERVER_UNTRUSTED),
    (
        "unable to find valid certification path",
        &TLS_SERVER_UNTRUSTED,
    ),
    ("tlsexchangeautherror", &TLS_SERVER_UNTRUSTED),
    ("alert certificate expired", &TLS_CLIENT_EXPIRED),
    ("certificate expired", &TLS_CLIENT_EXPIRED),
    ("certificateexpired", &TLS_CLIENT_EXPIRED),
    ("alert unknown ca", &TLS_UNKNOWN_CA),
    ("unknown ca", &TLS_UNKNOWN_CA),
    ("unknownca", &TLS_UNKNOWN_CA),
    ("bad certificate", &TLS_BAD_CERTIFICATE),
    ("badcertificate", &TLS_BAD_CERTIFICATE),
    ("bad_certificate", &TLS_BAD_CERTIFICATE),
    ("certificate required", &TLS_BAD_CERTIFICATE),
    ("handshake failure", &TLS_HANDSHAKE),
    ("handshake_failure", &TLS_HANDSHAKE),
    ("handshakefailure", &TLS_HANDSHAKE),
    ("handshake failed", &TLS_HANDSHAKE),
    ("invalid certificate", &INVALID_CERTIFICATE),
    ("connectiondroppederror", &CONNECTION_DROPPED),
    // Paho's rc 1 after a connection was up is a dropped connection, not CONNACK 1.
    ("paho returned rc==1", &CONNECTION_DROPPED),
    ("unexpected disconnect", &CONNECTION_DROPPED),
    ("connection dropped", &CONNECTION_DROPPED),
];

/// Wording checked only when the text holds no known code, status or CONNACK.
static WEAK_PHRASES: &[(&str, &str)] = &[
    ("credentials invalid, could not connect", "connack:5"),
    ("credentialerror", "connack:5"),
    ("connection refused: not authori", "connack:5"),
    ("not authorized", "connack:5"),
    ("not authorised", "connack:5"),
    ("notauthorized", "connack:5"),
    ("bad user name or password", "connack:4"),
    ("bad username or password", "connack:4"),
    ("server unavailable", "connack:3"),
    ("identifier rejected", "connack:2"),
    ("unacceptable protocol version", "connack:1"),
    ("prov_device_result_unauthorized", "c-unauthorized"),
    ("unexpected failure", "python-unexpected"),
    ("unauthorized", "status:401"),
    ("iothubunauthorizedaccess", "code:401002"),
    ("iothubunauthorized", "code:401003"),
    ("devicenotfound", "code:404001"),
    ("devicenotonline", "code:404103"),
    ("devicealreadyexists", "code:409001"),
    ("linkcreationconflict", "code:409002"),
    ("preconditionfailed", "code:412002"),
    ("iothubquotaexceeded", "code:403002"),
    ("devicemaximumqueuedepthexceeded", "code:403004"),
    ("throttlingexception", "code:429001"),
    ("throttlingbacklogtimeout", "code:429002"),
    ("too many requests", "status:429"),
    ("throttl", "status:429"),
    ("serverbusy", "status:503"),
    ("service unavailable", "status:503"),
    ("internal server error", "status:500"),
    ("timed out", "timeout"),
    ("timeout", "timeout"),
    ("connection refused", "unreachable"),
    ("name or service not known", "unreachable"),
    ("nodename nor servname", "unreachable"),
    ("failed to lookup address", "unreachable"),
    ("getaddrinfo", "unreachable"),
    ("no route to host", "unreachable"),
    ("network is unreachable", "unreachable"),
    ("connection reset", "unreachable"),
];

/// What a piece of error text means.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The part of the text that was recognised (a code, a status, a phrase), if any.
    pub matched: Option<String>,
    /// Whether the catalogue knows the error.
    pub known: bool,
    /// Azure's six-digit error code, as found or as the entry has it.
    pub code: Option<u32>,
    /// The HTTP status (or CONNACK return code for `mqtt`).
    pub status: Option<u16>,
    /// `dps`, `hub`, `mqtt`, `tls` or `sdk`; `None` when unknown.
    pub service: Option<Service>,
    /// The error's name.
    pub title: String,
    /// What it means.
    pub meaning: String,
    /// The likely causes, most likely first, as sentences.
    pub causes: Vec<String>,
    /// The classic causes among them, most likely first (each once).
    pub cause_names: Vec<Cause>,
}

impl Explanation {
    fn of(entry: &Entry, matched: String, code: Option<u32>, status: Option<u16>) -> Self {
        let mut cause_names = Vec::new();
        for cause in entry.causes.iter().filter_map(|(_, c)| *c) {
            if !cause_names.contains(&cause) {
                cause_names.push(cause);
            }
        }
        Explanation {
            matched: Some(matched),
            known: true,
            code: code.or(entry.code),
            status: status.or(entry.status),
            service: Some(entry.service),
            title: entry.title.into(),
            meaning: entry.meaning.into(),
            causes: entry.causes.iter().map(|(s, _)| (*s).to_string()).collect(),
            cause_names,
        }
    }

    fn unknown() -> Self {
        Explanation {
            matched: None,
            known: false,
            code: None,
            status: None,
            service: None,
            title: "Not a known DPS, IoT Hub, MQTT or TLS error".into(),
            meaning: "dpskit does not recognise this text. Look for a six-digit errorCode (such as 401002), an HTTP status, a CONNACK return code or a TLS alert in the full error (Python: the exception's __cause__), and explain that instead.".into(),
            causes: vec![
                "Run `dpskit doctor device CERT --dps NAME --connect` to check the credential, the enrollment and one traced attempt.".into(),
                "For X.509 devices most refusals are 401002: a chain not sent, a CA not verified, a group naming another CA, a CN that is not the registration id, or an expired certificate.".into(),
            ],
            cause_names: Vec::new(),
        }
    }
}

fn by_code(code: u32) -> Option<&'static Entry> {
    CATALOGUE.iter().find(|e| e.code == Some(code))
}

fn by_status(status: u16) -> Option<&'static Entry> {
    CATALOGUE
        .iter()
        .find(|e| e.code.is_none() && e.status == Some(status) && e.service != Service::Mqtt)
}

fn by_connack(rc: u16) -> Option<&'static Entry> {
    CATALOGUE
        .iter()
        .find(|e| e.service == Service::Mqtt && e.status == Some(rc))
}

fn resolve(key: &str) -> Option<&'static Entry> {
    let (kind, value) = key.split_once(':').unwrap_or((key, ""));
    match kind {
        "connack" => value.parse().ok().and_then(by_connack),
        "status" => value.parse().ok().and_then(by_status),
        "code" => value.parse().ok().and_then(by_code),
        "c-unauthorized" => Some(&C_UNAUTHORIZED),
        "python-unexpected" => Some(&PYTHON_UNEXPECTED_FAILURE),
        "timeout" => Some(&TIMEOUT_ENTRY),
        "unreachable" => Some(&UNREACHABLE_ENTRY),
        _ => None,
    }
}

/// The runs of ASCII digits in `text` that stand alone.
fn digit_runs(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            // A run glued to a letter or a dot is part of a name, a version or a time, not a code.
            let before = start.checked_sub(1).map(|b| bytes[b]);
            let after = bytes.get(i).copied();
            let glued = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphabetic() || b == b'.');
            if !glued(before) && !glued(after) {
                runs.push(&text[start..i]);
            }
        } else {
            i += 1;
        }
    }
    runs
}

/// A CONNACK return code named in `lower`: "connack 5", "connack code: 5", "rc==5", "rc=5",
/// "rc 5", "return code 5".
fn connack_code(lower: &str) -> Option<(u16, String)> {
    for marker in ["connack", "rc==", "rc=", "rc ", "rc:", "return code"] {
        let mut from = 0;
        while let Some(found) = lower[from..].find(marker) {
            let at = from + found;
            from = at + marker.len();
            // "rc" must be a word of its own ("src=", "arc " are not it).
            if marker.starts_with("rc")
                && at > 0
                && lower.as_bytes()[at - 1].is_ascii_alphanumeric()
            {
                continue;
            }
            let rest = &lower[from..];
            let skipped = rest
                .trim_start_matches(|c: char| c.is_whitespace() || ":=#(".contains(c))
                .trim_start_matches("code")
                .trim_start_matches("return")
                .trim_start_matches(|c: char| c.is_whitespace() || ":=#(".contains(c));
            let digits: String = skipped.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(rc) = digits.parse::<u16>()
                && (1..=5).contains(&rc)
            {
                return Some((rc, format!("CONNACK {rc}")));
            }
        }
    }
    None
}

/// Reads any SDK's error text (or a bare code or status) and says what it means. Never fails:
/// text it does not recognise gets `known: false` and general advice.
pub fn explain(text: &str) -> Explanation {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Explanation::unknown();
    }
    let lower = trimmed.to_ascii_lowercase();
    for (phrase, entry) in STRONG_PHRASES {
        if lower.contains(phrase) {
            let (code, status) = numbers(trimmed);
            // The phrase names the entry; a code in the same text is reported when it agrees.
            let code = code.filter(|c| entry.code.is_none_or(|e| e == *c));
            let status = status.filter(|s| entry.status.is_none_or(|e| e == *s));
            return Explanation::of(entry, (*phrase).to_string(), code, status);
        }
    }
    if let Some((rc, matched)) = connack_code(&lower)
        && let Some(entry) = by_connack(rc)
    {
        return Explanation::of(entry, matched, None, Some(rc));
    }
    let (code, status) = numbers(trimmed);
    if let Some(code) = code {
        if let Some(entry) = by_code(code) {
            return Explanation::of(entry, code.to_string(), Some(code), entry.status);
        }
        // An unknown sub-code still names its status family.
        if let Some(entry) = u16::try_from(code / 1000).ok().and_then(by_status) {
            return Explanation::of(entry, code.to_string(), Some(code), entry.status);
        }
    }
    if let Some(status) = status
        && let Some(entry) = by_status(status)
    {
        return Explanation::of(entry, status.to_string(), None, Some(status));
    }
    for (phrase, key) in WEAK_PHRASES {
        if lower.contains(phrase)
            && let Some(entry) = resolve(key)
        {
            return Explanation::of(entry, (*phrase).to_string(), None, None);
        }
    }
    // A bare CONNACK code: "5" alone.
    if let Ok(rc) = trimmed.parse::<u16>()
        && let Some(entry) = by_connack(rc)
    {
        return Explanation::of(entry, format!("CONNACK {rc}"), None, Some(rc));
    }
    Explanation::unknown()
}

/// The first six-digit Azure error code (status × 1000 + sub-code) and the first known HTTP
/// status in `text`.
fn numbers(text: &str) -> (Option<u32>, Option<u16>) {
    let runs = digit_runs(text);
    let code = runs.iter().find_map(|run| {
        (run.len() == 6)
            .then(|| run.parse::<u32>().ok())
            .flatten()
            .filter(|c| (400_000..600_000).contains(c))
    });
    let status = runs.iter().find_map(|run| {
        (run.len() == 3)
            .then(|| run.parse::<u16>().ok())
            .flatten()
            .filter(|s| by_status(*s).is_some())
    });
    (
        code,
        status.or(code.and_then(|c| u16::try_from(c / 1000).ok())),
    )
}

/// The causes an answer can mean, most likely first: by Azure's error code when there is
/// one, else by status (a CONNACK's return code counts as its status).
pub fn causes_for(status: Option<u16>, error_code: Option<u32>) -> Vec<Cause> {
    let entry = error_code
        .and_then(by_code)
        .or_else(|| status.and_then(|s| if s < 100 { by_connack(s) } else { by_status(s) }));
    let entry = entry.or_else(|| {
        // An unknown sub-code still names its status family.
        error_code
            .and_then(|c| u16::try_from(c / 1000).ok())
            .and_then(by_status)
    });
    match entry {
        Some(entry) => Explanation::of(entry, String::new(), None, None).cause_names,
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(text: &str) -> Explanation {
        let e = explain(text);
        assert!(e.known, "{text:?} was not recognised: {e:?}");
        e
    }

    #[test]
    fn bare_code_json_body_and_status_name_401002() {
        for text in [
            "401002",
            r#"{"errorCode":401002,"trackingId":"x","message":"Unauthorized"}"#,
            "DPS refused the registration of dev-1: 401 (401002) Unauthorized",
        ] {
            let e = first(text);
            assert_eq!(e.code, Some(401_002), "{text}");
            assert_eq!(e.status, Some(401), "{text}");
            assert_eq!(e.service, Some(Service::Dps));
            assert_eq!(e.cause_names[0], Cause::MissingIntermediate, "{text}");
        }
        let e = first("401");
        assert_eq!((e.code, e.status), (None, Some(401)));
        assert!(e.cause_names.contains(&Cause::UnverifiedCa));
    }

    #[test]
    fn hub_codes_are_known() {
        for (code, service) in [
            (400_004, Service::Hub),
            (401_003, Service::Hub),
            (403_002, Service::Hub),
            (403_004, Service::Hub),
            (404_001, Service::Hub),
            (404_103, Service::Hub),
            (409_001, Service::Hub),
            (409_002, Service::Hub),
            (412_002, Service::Hub),
            (429_001, Service::Hub),
            (429_002, Service::Hub),
            (429_003, Service::Hub),
            (500_001, Service::Hub),
            (503_003, Service::Hub),
            (404_201, Service::Dps),
            (400_208, Service::Dps),
            (400_209, Service::Dps),
        ] {
            let e = first(&code.to_string());
            assert_eq!(e.code, Some(code));
            assert_eq!(e.service, Some(service), "{code}");
            assert_eq!(e.status, u16::try_from(code / 1000).ok(), "{code}");
        }
        assert_eq!(first("400208").cause_names, vec![Cause::NoLinkedHub]);
    }

    #[test]
    fn an_unknown_sub_code_names_its_family() {
        let e = first("errorCode 401999");
        assert_eq!((e.code, e.status), (Some(401_999), Some(401)));
        assert_eq!(e.title, "Unauthorized");
    }

    #[test]
    fn connack_forms() {
        for text in [
            "CONNACK 5",
            "Paho returned rc==5",
            "connect failed rc=5",
            "Connection refused: not authorized",
            "Not authorized",
            "CredentialError: Credentials invalid, could not connect",
            "5",
        ] {
            let e = first(text);
            assert_eq!(e.service, Some(Service::Mqtt), "{text}");
            assert_eq!(e.status, Some(5), "{text}");
            assert_eq!(e.cause_names[0], Cause::HubIdentityMismatch, "{text}");
        }
        assert_eq!(first("CONNACK code: 4").status, Some(4));
        assert_eq!(
            first("CONNACK 1").title,
            "CONNACK 1: unacceptable protocol version"
        );
    }

    #[test]
    fn tls_texts() {
        for text in [
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate (_ssl.c:1006)",
            "unable to get local issuer certificate",
            "invalid peer certificate: UnknownIssuer",
            "x509: certificate signed by unknown authority",
            "The remote certificate is invalid according to the validation procedure.",
        ] {
            let e = first(text);
            assert_eq!(e.service, Some(Service::Tls), "{text}");
            assert_eq!(
                e.cause_names,
                vec![Cause::StaleTrustBundle, Cause::UntrustedServer],
                "{text}"
            );
        }
        let e = first("ssl3_read_bytes:sslv3 alert certificate expired");
        assert_eq!(e.cause_names[0], Cause::ExpiredLeaf);
        let e = first("certificate verify failed: certificate has expired");
        assert_eq!(e.title, "The server's certificate is outside its validity");
        let e = first("sslv3 alert handshake failure");
        assert_eq!(e.cause_names[0], Cause::UnsupportedAlgorithm);
        let e = first("tlsv1 alert bad certificate");
        assert_eq!(e.cause_names[0], Cause::UnfitLeaf);
    }

    #[test]
    fn sdk_messages() {
        let e = first(r#"{"errorCode":401002,"message":"CA certificate not found."}"#);
        assert_eq!(e.title, "CA certificate not found");
        assert_eq!(e.code, Some(401_002));
        assert_eq!(
            &e.cause_names[..3],
            &[
                Cause::MissingIntermediate,
                Cause::UnverifiedCa,
                Cause::WrongCaInGroup
            ]
        );
        let e = first("Signing certificate info did not match chain elements");
        assert_eq!(e.cause_names[0], Cause::WrongCaInGroup);
        let e = first("Invalid certificate");
        assert_eq!(e.code, Some(401_002));
        let e = first("ClientError: Unexpected failure");
        assert_eq!(e.service, Some(Service::Sdk));
        assert!(e.meaning.contains("__cause__"));
        // The status in the wrapped ServiceError is more precise than the wrapper.
        let e =
            first("Unexpected failure: register request returned a service error status code 401");
        assert_eq!(e.status, Some(401));
        let e = first("PROV_DEVICE_RESULT_UNAUTHORIZED");
        assert!(e.cause_names.contains(&Cause::NoLinkedHub));
        let e = first("ConnectionDroppedError('Paho returned rc==1')");
        assert_eq!(e.title, "The server closed the connection");
        assert_eq!(first("Paho returned rc==1").title, e.title);
        assert_eq!(e.cause_names[0], Cause::MissingIntermediate);
    }

    #[test]
    fn unknown_text_gets_general_advice() {
        for text in ["", "   ", "the printer is on fire", "port 8883", "v1.2.3"] {
            let e = explain(text);
            assert!(!e.known, "{text:?}: {e:?}");
            assert!(e.matched.is_none());
            assert!(!e.causes.is_empty());
        }
    }

    #[test]
    fn causes_for_codes_and_statuses() {
        let c = causes_for(Some(401), Some(401_002));
        for expected in [
            Cause::MissingIntermediate,
            Cause::UnverifiedCa,
            Cause::WrongCaInGroup,
            Cause::CnMismatch,
            Cause::ExpiredLeaf,
            Cause::ExpiredIntermediate,
            Cause::DisabledEnrollment,
            Cause::ChainOrder,
            Cause::Pkcs12WithoutChain,
            Cause::IndividualEnrollmentMismatch,
        ] {
            assert!(c.contains(&expected), "{expected:?} missing from {c:?}");
        }
        assert_eq!(c[0], Cause::MissingIntermediate);
        assert_eq!(
            causes_for(Some(400), Some(400_208)),
            vec![Cause::NoLinkedHub]
        );
        assert!(causes_for(Some(404), None).contains(&Cause::NoLinkedHub));
        assert_eq!(causes_for(Some(5), None)[0], Cause::HubIdentityMismatch);
        assert_eq!(
            causes_for(Some(401), Some(401_777))[0],
            Cause::MissingIntermediate
        );
        assert!(causes_for(None, None).is_empty());
        assert!(causes_for(Some(200), None).is_empty());
    }
}
