//! Bindings for the X.509 toolkit: `Certificate`, `DeviceCertificate`, `CertificateAuthority`,
//! `verify_chain`, `validate_registration_id`, `credential_files` (the file naming the CLI
//! reads by).

// Python keyword arguments map one to one onto Rust parameters.
#![allow(clippy::too_many_arguments)]

use std::path::PathBuf;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::error::Error;
use crate::pki::files::{
    ManifestFormat, SaveOptions, SavedFiles, save_credential, save_devices, slug,
};
use crate::pki::issue::now;
use crate::pki::{
    CaOptions, Certificate, CertificateAuthority, Credential, DeviceCredential, KeyAlgorithm,
    Validity,
};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCertificate>()?;
    m.add_class::<PyDeviceCertificate>()?;
    m.add_class::<PyCertificateAuthority>()?;
    m.add_function(wrap_pyfunction!(verify_chain, m)?)?;
    m.add_function(wrap_pyfunction!(validate_registration_id, m)?)?;
    m.add_function(wrap_pyfunction!(credential_files, m)?)?;
    let names: Vec<&str> = KeyAlgorithm::ALL.iter().map(|a| a.name()).collect();
    m.add("ALGORITHMS", pyo3::types::PyTuple::new(m.py(), names)?)?;
    Ok(())
}

/// Reads `str` (UTF-8) or `bytes` without copying through a Python list.
fn text_or_bytes(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(s.to_str()?.as_bytes().to_vec());
    }
    if let Ok(b) = value.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    Err(PyTypeError::new_err(format!(
        "{what} must be str or bytes, not {}",
        value.get_type().name()?
    )))
}

fn password_bytes(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<u8>>> {
    value.map(|v| text_or_bytes(v, "password")).transpose()
}

fn read_file(path: &PathBuf) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Unix seconds of a datetime; naive datetimes are taken as UTC.
fn unix_seconds(value: &Bound<'_, PyAny>) -> PyResult<i64> {
    let py = value.py();
    let value = if value.getattr("tzinfo")?.is_none() {
        let utc = py.import("datetime")?.getattr("timezone")?.getattr("utc")?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("tzinfo", utc)?;
        value.call_method("replace", (), Some(&kwargs))?
    } else {
        value.clone()
    };
    let seconds: f64 = value.call_method0("timestamp")?.extract()?;
    Ok(seconds.floor() as i64)
}

fn datetime_utc(py: Python<'_>, unix: i64) -> PyResult<Bound<'_, PyAny>> {
    let datetime = py.import("datetime")?;
    let utc = datetime.getattr("timezone")?.getattr("utc")?;
    datetime
        .getattr("datetime")?
        .call_method1("fromtimestamp", (unix, utc))
}

fn validity(days: i64, not_before: Option<&Bound<'_, PyAny>>) -> PyResult<Validity> {
    let not_before = not_before.map(unix_seconds).transpose()?;
    Ok(Validity::days(days, not_before)?)
}

fn path_length(value: Option<i64>) -> PyResult<Option<u8>> {
    value
        .map(|n| {
            u8::try_from(n).map_err(|_| {
                Error::cert(format!(
                    "path_length {n} is out of range: use 0 to 255, or None"
                ))
                .into()
            })
        })
        .transpose()
}

/// The saved paths as a dict in a fixed, readable order.
fn saved_paths(py: Python<'_>, files: SavedFiles) -> PyResult<Bound<'_, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("certificate", files.certificate)?;
    dict.set_item("private_key", files.private_key)?;
    dict.set_item("chain", files.chain)?;
    dict.set_item("full_chain", files.full_chain)?;
    if let Some(pfx) = files.pkcs12 {
        dict.set_item("pkcs12", pfx)?;
    }
    Ok(dict)
}

/// The files a credential called `name` has in `folder`, by the rule every save writes them
/// with (the `.pfx` included, though only saves asked for one write it).
#[pyfunction]
fn credential_files<'py>(
    py: Python<'py>,
    folder: PathBuf,
    name: &str,
) -> PyResult<Bound<'py, PyDict>> {
    saved_paths(py, SavedFiles::named(&folder, name, true)?)
}

fn certificates(list: Vec<Certificate>) -> Vec<PyCertificate> {
    list.into_iter()
        .map(|inner| PyCertificate { inner })
        .collect()
}

/// A parsed X.509 certificate (public material only).
#[pyclass(frozen, module = "dpskit", name = "Certificate")]
pub struct PyCertificate {
    pub(crate) inner: Certificate,
}

#[pymethods]
impl PyCertificate {
    /// Parses the first certificate in PEM text.
    #[staticmethod]
    fn from_pem(data: &Bound<'_, PyAny>) -> PyResult<Self> {
        let data = text_or_bytes(data, "data")?;
        Ok(PyCertificate {
            inner: Certificate::from_pem(&data)?,
        })
    }

    /// Parses one DER certificate.
    #[staticmethod]
    fn from_der(data: &Bound<'_, PyBytes>) -> PyResult<Self> {
        Ok(PyCertificate {
            inner: Certificate::from_der(data.as_bytes())?,
        })
    }

    /// Parses every certificate in PEM text, in order.
    #[staticmethod]
    fn from_pem_chain(data: &Bound<'_, PyAny>) -> PyResult<Vec<Self>> {
        let data = text_or_bytes(data, "data")?;
        Ok(certificates(Certificate::chain_from_pem(&data)?))
    }

    /// Loads the first certificate of a PEM or DER file.
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<Self> {
        let mut all = Certificate::all_from_bytes(&read_file(&path)?)?;
        Ok(PyCertificate {
            inner: all.remove(0),
        })
    }

    /// Loads every certificate of a PEM file (or the one in a DER file).
    #[staticmethod]
    fn load_all(path: PathBuf) -> PyResult<Vec<Self>> {
        Ok(certificates(Certificate::all_from_bytes(&read_file(
            &path,
        )?)?))
    }

    /// PEM text.
    #[getter]
    fn pem(&self) -> String {
        self.inner.pem()
    }

    /// DER bytes.
    #[getter]
    fn der<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.der())
    }

    /// Subject, e.g. `CN=Contoso Root CA, O=Contoso`.
    #[getter]
    fn subject(&self) -> String {
        self.inner.info().subject.clone()
    }

    /// Issuer, e.g. `CN=Contoso Root CA`.
    #[getter]
    fn issuer(&self) -> String {
        self.inner.info().issuer.clone()
    }

    /// The subject's CN (the registration id on a device certificate).
    #[getter]
    fn common_name(&self) -> Option<String> {
        self.inner.info().common_name.clone()
    }

    /// The issuer's CN.
    #[getter]
    fn issuer_common_name(&self) -> Option<String> {
        self.inner.info().issuer_common_name.clone()
    }

    /// Serial number, upper-case hex.
    #[getter]
    fn serial_number(&self) -> String {
        self.inner.info().serial_number.clone()
    }

    /// SHA-1 thumbprint, upper-case hex (what Azure shows).
    #[getter]
    fn thumbprint_sha1(&self) -> String {
        self.inner.info().thumbprint_sha1.clone()
    }

    /// SHA-256 thumbprint, upper-case hex.
    #[getter]
    fn thumbprint_sha256(&self) -> String {
        self.inner.info().thumbprint_sha256.clone()
    }

    /// Start of validity (UTC).
    #[getter]
    fn not_before<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        datetime_utc(py, self.inner.info().not_before)
    }

    /// End of validity (UTC).
    #[getter]
    fn not_after<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        datetime_utc(py, self.inner.info().not_after)
    }

    /// Whether basicConstraints says CA:TRUE.
    #[getter]
    fn is_ca(&self) -> bool {
        self.inner.info().is_ca
    }

    /// The CA's pathLenConstraint, if any.
    #[getter]
    fn path_length(&self) -> Option<u32> {
        self.inner.info().path_length
    }

    /// Key algorithm (`ec-p256`, `rsa-2048`, ...).
    #[getter]
    fn key_algorithm(&self) -> String {
        self.inner.info().key_algorithm.clone()
    }

    /// Signature algorithm (`ecdsa-with-SHA256`, `sha256WithRSAEncryption`, ...).
    #[getter]
    fn signature_algorithm(&self) -> String {
        self.inner.info().signature_algorithm.clone()
    }

    /// keyUsage names (`digitalSignature`, `keyCertSign`, `cRLSign`, ...).
    #[getter]
    fn key_usage(&self) -> Vec<String> {
        self.inner.info().key_usage.clone()
    }

    /// extendedKeyUsage names (`clientAuth`, ...).
    #[getter]
    fn extended_key_usage(&self) -> Vec<String> {
        self.inner.info().extended_key_usage.clone()
    }

    /// subjectKeyIdentifier, upper-case hex.
    #[getter]
    fn subject_key_identifier(&self) -> Option<String> {
        self.inner.info().subject_key_identifier.clone()
    }

    /// authorityKeyIdentifier, upper-case hex.
    #[getter]
    fn authority_key_identifier(&self) -> Option<String> {
        self.inner.info().authority_key_identifier.clone()
    }

    /// Whether the certificate is self-signed (a root).
    #[getter]
    fn is_self_signed(&self) -> bool {
        self.inner.info().is_self_signed
    }

    /// Whether `when` (default: now) lies within the validity period.
    #[pyo3(signature = (when = None))]
    fn is_valid_at(&self, when: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let at = when.map(unix_seconds).transpose()?.unwrap_or_else(now);
        let info = self.inner.info();
        Ok(info.not_before <= at && at <= info.not_after)
    }

    /// Writes the certificate as PEM to `path` and returns the path.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<PathBuf> {
        let pem = self.inner.pem();
        py.detach(|| -> crate::Result<()> {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            crate::pki::files::write_public(&path, pem.as_bytes())
        })?;
        Ok(path)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyCertificate>()
            .is_ok_and(|o| o.get().inner == self.inner)
    }

    fn __hash__(&self) -> u64 {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.inner.der());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_ref()[..8]);
        u64::from_le_bytes(first)
    }

    fn __repr__(&self) -> String {
        let info = self.inner.info();
        format!(
            "<Certificate subject={:?} issuer={:?} thumbprint_sha1={} not_after={}>",
            info.subject,
            info.issuer,
            info.thumbprint_sha1,
            crate::pki::chain::format_time(info.not_after)
        )
    }
}

/// Wraps the credential-wide accessors shared by devices and CAs.
fn pkcs12(
    py: Python<'_>,
    credential: &Credential,
    password: &str,
    legacy: bool,
) -> PyResult<Py<PyBytes>> {
    let name = credential
        .certificate()
        .info()
        .common_name
        .clone()
        .unwrap_or_default();
    let der = py.detach(|| crate::pki::pkcs12::to_pkcs12(credential, password, legacy, &name))?;
    Ok(PyBytes::new(py, &der).unbind())
}

fn encrypted_key(
    py: Python<'_>,
    credential: &Credential,
    password: &Bound<'_, PyAny>,
) -> PyResult<String> {
    let password = text_or_bytes(password, "password")?;
    Ok(py.detach(|| credential.key().encrypted_pkcs8_pem(&password))?)
}

/// A device certificate with its private key and chain; its CN is the registration id.
#[pyclass(frozen, module = "dpskit", name = "DeviceCertificate")]
pub struct PyDeviceCertificate {
    pub(crate) inner: DeviceCredential,
}

impl PyDeviceCertificate {
    /// The credential, shared with device clients without copying keys around.
    pub(crate) fn credential_arc(&self) -> std::sync::Arc<crate::pki::Credential> {
        self.inner.shared_credential()
    }
}

#[pymethods]
impl PyDeviceCertificate {
    /// Loads a device credential from PEM data (the certificate may be followed by its chain).
    #[staticmethod]
    #[pyo3(signature = (certificate_pem, private_key_pem, *, password = None))]
    fn from_pem(
        py: Python<'_>,
        certificate_pem: &Bound<'_, PyAny>,
        private_key_pem: &Bound<'_, PyAny>,
        password: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let cert = text_or_bytes(certificate_pem, "certificate_pem")?;
        let key = text_or_bytes(private_key_pem, "private_key_pem")?;
        let password = password_bytes(password)?;
        let inner = py.detach(|| {
            DeviceCredential::new(Credential::from_pem(&cert, &key, password.as_deref())?)
        })?;
        Ok(PyDeviceCertificate { inner })
    }

    /// Loads a device credential from a certificate file (optionally with its chain) and a key
    /// file in any format OpenSSL writes.
    #[staticmethod]
    #[pyo3(signature = (certificate_path, private_key_path, *, password = None))]
    fn load(
        py: Python<'_>,
        certificate_path: PathBuf,
        private_key_path: PathBuf,
        password: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let password = password_bytes(password)?;
        let inner = py.detach(|| {
            let cert = read_file(&certificate_path)?;
            let key = read_file(&private_key_path)?;
            DeviceCredential::new(Credential::from_pem(&cert, &key, password.as_deref())?)
        })?;
        Ok(PyDeviceCertificate { inner })
    }

    /// Loads a device credential from PKCS#12 bytes.
    #[staticmethod]
    #[pyo3(signature = (data, password = ""))]
    fn from_pkcs12(py: Python<'_>, data: &Bound<'_, PyBytes>, password: &str) -> PyResult<Self> {
        let data = data.as_bytes().to_vec();
        let inner =
            py.detach(|| DeviceCredential::new(crate::pki::pkcs12::from_pkcs12(&data, password)?))?;
        Ok(PyDeviceCertificate { inner })
    }

    /// The registration id (= the certificate's CN).
    #[getter]
    fn registration_id(&self) -> &str {
        self.inner.registration_id()
    }

    /// The key algorithm.
    #[getter]
    fn algorithm(&self) -> &'static str {
        self.inner.credential().key().algorithm().name()
    }

    /// The parsed certificate.
    #[getter]
    fn certificate(&self) -> PyCertificate {
        PyCertificate {
            inner: self.inner.credential().certificate().clone(),
        }
    }

    /// The issuers, nearest first (intermediates, then the root when known).
    #[getter]
    fn issuers(&self) -> Vec<PyCertificate> {
        certificates(self.inner.credential().issuers().to_vec())
    }

    /// Certificate PEM.
    #[getter]
    fn certificate_pem(&self) -> &str {
        self.inner.credential().certificate_pem()
    }

    /// Certificate DER.
    #[getter]
    fn certificate_der<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.credential().certificate().der())
    }

    /// Private key, unencrypted PKCS#8 PEM.
    #[getter]
    fn private_key_pem(&self) -> &str {
        self.inner.credential().private_key_pem()
    }

    /// Private key, unencrypted PKCS#8 DER.
    #[getter]
    fn private_key_der<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.credential().key().pkcs8_der())
    }

    /// Certificate + intermediates: what the device sends during the TLS handshake.
    #[getter]
    fn chain_pem(&self) -> String {
        self.inner.credential().chain_pem()
    }

    /// Certificate + intermediates + root.
    #[getter]
    fn full_chain_pem(&self) -> String {
        self.inner.credential().full_chain_pem()
    }

    /// Private key as encrypted PKCS#8 PEM (PBES2, AES-256-CBC).
    fn encrypted_private_key_pem(
        &self,
        py: Python<'_>,
        password: &Bound<'_, PyAny>,
    ) -> PyResult<String> {
        encrypted_key(py, self.inner.credential(), password)
    }

    /// PKCS#12 with key, certificate and chain; `legacy` for .NET Framework / old Windows.
    #[pyo3(signature = (password = "", *, legacy = false))]
    fn to_pkcs12(&self, py: Python<'_>, password: &str, legacy: bool) -> PyResult<Py<PyBytes>> {
        pkcs12(py, self.inner.credential(), password, legacy)
    }

    /// Writes `{name}.cert.pem`, `.key.pem` (0600), `.chain.pem`, `.fullchain.pem` and `.pfx`
    /// (0600) into `folder`; `name` defaults to the registration id.
    #[pyo3(signature = (folder, *, name = None, pkcs12_password = "", legacy_pkcs12 = false))]
    fn save<'py>(
        &self,
        py: Python<'py>,
        folder: PathBuf,
        name: Option<String>,
        pkcs12_password: &str,
        legacy_pkcs12: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let name = name.unwrap_or_else(|| self.inner.registration_id().to_string());
        let options = SaveOptions {
            key_password: None,
            pkcs12_password: Some(pkcs12_password),
            legacy_pkcs12,
        };
        let files =
            py.detach(|| save_credential(self.inner.credential(), &folder, &name, &options))?;
        saved_paths(py, files)
    }

    fn __repr__(&self) -> String {
        let info = self.inner.credential().certificate().info();
        format!(
            "<DeviceCertificate registration_id={:?} algorithm={} issuer={:?} thumbprint_sha1={} private_key=<redacted>>",
            self.inner.registration_id(),
            self.inner.credential().key().algorithm(),
            info.issuer_common_name.as_deref().unwrap_or(&info.issuer),
            info.thumbprint_sha1
        )
    }
}

/// A certificate authority: certificate, private key and the chain above it.
#[pyclass(frozen, module = "dpskit", name = "CertificateAuthority")]
pub struct PyCertificateAuthority {
    pub(crate) inner: CertificateAuthority,
}

fn ca_options(
    algorithm: &str,
    days: i64,
    path_length: Option<i64>,
    organization: Option<String>,
    not_before: Option<&Bound<'_, PyAny>>,
) -> PyResult<CaOptions> {
    Ok(CaOptions {
        algorithm: KeyAlgorithm::parse(algorithm)?,
        validity: validity(days, not_before)?,
        path_length: self::path_length(path_length)?,
        organization,
    })
}

#[pymethods]
impl PyCertificateAuthority {
    /// Creates a self-signed root CA.
    #[staticmethod]
    #[pyo3(signature = (common_name, *, algorithm = "ec-p256", days = 3650, path_length = None, organization = None, not_before = None))]
    fn create_root(
        py: Python<'_>,
        common_name: &str,
        algorithm: &str,
        days: i64,
        path_length: Option<i64>,
        organization: Option<String>,
        not_before: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let options = ca_options(algorithm, days, path_length, organization, not_before)?;
        let inner = py.detach(|| CertificateAuthority::create_root(common_name, &options))?;
        Ok(PyCertificateAuthority { inner })
    }

    /// Loads a CA from PEM data (the certificate may be followed by its chain).
    #[staticmethod]
    #[pyo3(signature = (certificate_pem, private_key_pem, *, password = None))]
    fn from_pem(
        py: Python<'_>,
        certificate_pem: &Bound<'_, PyAny>,
        private_key_pem: &Bound<'_, PyAny>,
        password: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let cert = text_or_bytes(certificate_pem, "certificate_pem")?;
        let key = text_or_bytes(private_key_pem, "private_key_pem")?;
        let password = password_bytes(password)?;
        let inner =
            py.detach(|| CertificateAuthority::from_pem(&cert, &key, password.as_deref()))?;
        Ok(PyCertificateAuthority { inner })
    }

    /// Loads a CA from files: the certificate (optionally followed by its chain) and its key in
    /// any format OpenSSL writes, encrypted ones with `password`.
    #[staticmethod]
    #[pyo3(signature = (certificate_path, private_key_path, *, password = None))]
    fn load(
        py: Python<'_>,
        certificate_path: PathBuf,
        private_key_path: PathBuf,
        password: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let password = password_bytes(password)?;
        let inner = py.detach(|| {
            let cert = read_file(&certificate_path)?;
            let key = read_file(&private_key_path)?;
            CertificateAuthority::from_pem(&cert, &key, password.as_deref())
        })?;
        Ok(PyCertificateAuthority { inner })
    }

    /// Creates an intermediate CA signed by this CA (pathlen 0 by default: it issues devices).
    #[pyo3(
        signature = (common_name, *, algorithm = "ec-p256", days = 1825, path_length = Some(0), organization = None, not_before = None),
        text_signature = "(self, common_name, *, algorithm='ec-p256', days=1825, path_length=0, organization=None, not_before=None)"
    )]
    fn create_intermediate(
        &self,
        py: Python<'_>,
        common_name: &str,
        algorithm: &str,
        days: i64,
        path_length: Option<i64>,
        organization: Option<String>,
        not_before: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let options = ca_options(algorithm, days, path_length, organization, not_before)?;
        let inner = py.detach(|| self.inner.create_intermediate(common_name, &options))?;
        Ok(PyCertificateAuthority { inner })
    }

    /// Issues a device certificate with CN = `registration_id`.
    #[pyo3(signature = (registration_id, *, algorithm = "ec-p256", days = 365, not_before = None))]
    fn issue_device(
        &self,
        py: Python<'_>,
        registration_id: &str,
        algorithm: &str,
        days: i64,
        not_before: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyDeviceCertificate> {
        let algorithm = KeyAlgorithm::parse(algorithm)?;
        let validity = validity(days, not_before)?;
        let inner = py.detach(|| {
            self.inner
                .issue_device(registration_id, algorithm, validity)
        })?;
        Ok(PyDeviceCertificate { inner })
    }

    /// Issues many device certificates in parallel (GIL released), in input order; optionally
    /// saves them into `output_dir` with a manifest.
    #[pyo3(signature = (registration_ids, *, algorithm = "ec-p256", days = 365, not_before = None, output_dir = None, manifest = None, pkcs12_password = None))]
    fn issue_devices(
        &self,
        py: Python<'_>,
        registration_ids: &Bound<'_, PyAny>,
        algorithm: &str,
        days: i64,
        not_before: Option<&Bound<'_, PyAny>>,
        output_dir: Option<PathBuf>,
        manifest: Option<&str>,
        pkcs12_password: Option<String>,
    ) -> PyResult<Vec<PyDeviceCertificate>> {
        if registration_ids.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(
                "registration_ids must be an iterable of strings, not a single string",
            ));
        }
        let ids = registration_ids
            .try_iter()?
            .map(|id| id.and_then(|id| id.extract::<String>()))
            .collect::<PyResult<Vec<String>>>()?;
        let algorithm = KeyAlgorithm::parse(algorithm)?;
        let validity = validity(days, not_before)?;
        let manifest = manifest.map(ManifestFormat::parse).transpose()?;
        if manifest.is_some() && output_dir.is_none() {
            return Err(Error::config("manifest needs output_dir").into());
        }
        let devices = py.detach(|| -> crate::Result<Vec<DeviceCredential>> {
            let devices = self.inner.issue_devices(&ids, algorithm, validity)?;
            if let Some(folder) = &output_dir {
                let options = SaveOptions {
                    key_password: None,
                    pkcs12_password: pkcs12_password.as_deref(),
                    legacy_pkcs12: false,
                };
                save_devices(&devices, folder, &options, manifest)?;
            }
            Ok(devices)
        })?;
        Ok(devices
            .into_iter()
            .map(|inner| PyDeviceCertificate { inner })
            .collect())
    }

    /// The proof-of-possession certificate: CN = `verification_code`, signed by this CA.
    #[pyo3(signature = (verification_code, *, days = 30))]
    fn create_verification_certificate(
        &self,
        py: Python<'_>,
        verification_code: &str,
        days: i64,
    ) -> PyResult<PyCertificate> {
        let validity = validity(days, None)?;
        let inner = py.detach(|| {
            self.inner
                .create_verification_certificate(verification_code, validity)
        })?;
        Ok(PyCertificate { inner })
    }

    /// Signs a device CSR with the device profile.
    #[pyo3(signature = (csr_pem, *, registration_id = None, days = 365, not_before = None))]
    fn sign_csr(
        &self,
        py: Python<'_>,
        csr_pem: &Bound<'_, PyAny>,
        registration_id: Option<String>,
        days: i64,
        not_before: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyCertificate> {
        let csr = text_or_bytes(csr_pem, "csr_pem")?;
        let validity = validity(days, not_before)?;
        let inner = py.detach(|| {
            self.inner
                .sign_csr(&csr, registration_id.as_deref(), validity)
        })?;
        Ok(PyCertificate { inner })
    }

    /// The CA's common name.
    #[getter]
    fn common_name(&self) -> String {
        self.inner.common_name()
    }

    /// The key algorithm.
    #[getter]
    fn algorithm(&self) -> &'static str {
        self.inner.credential().key().algorithm().name()
    }

    /// The parsed CA certificate.
    #[getter]
    fn certificate(&self) -> PyCertificate {
        PyCertificate {
            inner: self.inner.credential().certificate().clone(),
        }
    }

    /// The issuers above this CA, nearest first.
    #[getter]
    fn issuers(&self) -> Vec<PyCertificate> {
        certificates(self.inner.credential().issuers().to_vec())
    }

    /// Certificate PEM.
    #[getter]
    fn certificate_pem(&self) -> &str {
        self.inner.credential().certificate_pem()
    }

    /// Certificate DER.
    #[getter]
    fn certificate_der<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.credential().certificate().der())
    }

    /// Private key, unencrypted PKCS#8 PEM.
    #[getter]
    fn private_key_pem(&self) -> &str {
        self.inner.credential().private_key_pem()
    }

    /// Private key, unencrypted PKCS#8 DER.
    #[getter]
    fn private_key_der<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.credential().key().pkcs8_der())
    }

    /// This CA's certificate + the intermediates above it (no root).
    #[getter]
    fn chain_pem(&self) -> String {
        self.inner.credential().chain_pem()
    }

    /// This CA's certificate + every issuer, root included.
    #[getter]
    fn full_chain_pem(&self) -> String {
        self.inner.credential().full_chain_pem()
    }

    /// Private key as encrypted PKCS#8 PEM (PBES2, AES-256-CBC).
    fn encrypted_private_key_pem(
        &self,
        py: Python<'_>,
        password: &Bound<'_, PyAny>,
    ) -> PyResult<String> {
        encrypted_key(py, self.inner.credential(), password)
    }

    /// PKCS#12 with key, certificate and chain (for Windows certificate stores).
    #[pyo3(signature = (password = "", *, legacy = false))]
    fn to_pkcs12(&self, py: Python<'_>, password: &str, legacy: bool) -> PyResult<Py<PyBytes>> {
        pkcs12(py, self.inner.credential(), password, legacy)
    }

    /// Writes `{name}.cert.pem`, `.key.pem` (0600, encrypted when `key_password` is given),
    /// `.chain.pem` and `.fullchain.pem`; `name` defaults to a slug of the CN.
    #[pyo3(signature = (folder, *, name = None, key_password = None))]
    fn save<'py>(
        &self,
        py: Python<'py>,
        folder: PathBuf,
        name: Option<String>,
        key_password: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let name = name.unwrap_or_else(|| slug(&self.inner.common_name()));
        let key_password = password_bytes(key_password)?;
        let options = SaveOptions {
            key_password: key_password.as_deref(),
            pkcs12_password: None,
            legacy_pkcs12: false,
        };
        let files =
            py.detach(|| save_credential(self.inner.credential(), &folder, &name, &options))?;
        saved_paths(py, files)
    }

    fn __repr__(&self) -> String {
        let info = self.inner.credential().certificate().info();
        format!(
            "<CertificateAuthority common_name={:?} algorithm={} path_length={} thumbprint_sha1={} private_key=<redacted>>",
            self.inner.common_name(),
            self.inner.credential().key().algorithm(),
            info.path_length
                .map_or_else(|| "None".to_string(), |n| n.to_string()),
            info.thumbprint_sha1
        )
    }
}

/// Verifies `leaf` → `intermediates` → one of `anchors`; returns the path or raises
/// `CertificateError` saying which link fails and why.
#[pyfunction]
#[pyo3(
    signature = (leaf, intermediates = Vec::new(), anchors = Vec::new(), *, at = None),
    text_signature = "(leaf, intermediates=(), anchors=(), *, at=None)"
)]
fn verify_chain(
    py: Python<'_>,
    leaf: PyRef<'_, PyCertificate>,
    intermediates: Vec<PyRef<'_, PyCertificate>>,
    anchors: Vec<PyRef<'_, PyCertificate>>,
    at: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<PyCertificate>> {
    let at = at.map(unix_seconds).transpose()?.unwrap_or_else(now);
    let leaf = leaf.inner.clone();
    let intermediates: Vec<Certificate> = intermediates.iter().map(|c| c.inner.clone()).collect();
    let anchors: Vec<Certificate> = anchors.iter().map(|c| c.inner.clone()).collect();
    let path = py.detach(|| crate::pki::verify_chain(&leaf, &intermediates, &anchors, at))?;
    Ok(certificates(path))
}

/// Checks a registration id against DPS's rules; raises `CertificateError` naming the rule.
#[pyfunction]
#[pyo3(signature = (registration_id, *, x509 = true))]
fn validate_registration_id(registration_id: &str, x509: bool) -> PyResult<()> {
    Ok(crate::pki::validate_registration_id(registration_id, x509)?)
}
