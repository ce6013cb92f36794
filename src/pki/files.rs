//! Writing credentials to disk: a predictable naming scheme, private material at mode 0600,
//! and a manifest for bulk issuance.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::pki::issue::{Credential, DeviceCredential};

/// Paths written by a save, keyed by what they hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedFiles {
    /// `{name}.cert.pem`
    pub certificate: PathBuf,
    /// `{name}.key.pem` (mode 0600)
    pub private_key: PathBuf,
    /// `{name}.chain.pem`: certificate + intermediates
    pub chain: PathBuf,
    /// `{name}.fullchain.pem`: certificate + intermediates + root
    pub full_chain: PathBuf,
    /// `{name}.pfx` (mode 0600), when written
    pub pkcs12: Option<PathBuf>,
}

impl SavedFiles {
    /// The files a credential called `name` has in `folder` (the one naming rule: what
    /// [`save_credential`] writes, and where the CLI looks for a CA or a device), `{name}.pfx`
    /// only with `pkcs12`. Refuses a name that would escape the folder or hide the files.
    pub fn named(folder: &Path, name: &str, pkcs12: bool) -> Result<SavedFiles> {
        check_file_stem(name)?;
        let path = |suffix: &str| folder.join(format!("{name}{suffix}"));
        Ok(SavedFiles {
            certificate: path(".cert.pem"),
            private_key: path(".key.pem"),
            chain: path(".chain.pem"),
            full_chain: path(".fullchain.pem"),
            pkcs12: pkcs12.then(|| path(".pfx")),
        })
    }
}

/// What to put in the files besides the certificate.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions<'a> {
    /// Encrypts the key file (PKCS#8, PBES2) with this password.
    pub key_password: Option<&'a [u8]>,
    /// Writes `{name}.pfx` with this password.
    pub pkcs12_password: Option<&'a str>,
    /// Writes the PFX with legacy 3DES/SHA-1 encryption.
    pub legacy_pkcs12: bool,
}

/// Writes `credential` into `folder` as `{name}.*`, creating the folder if needed.
pub fn save_credential(
    credential: &Credential,
    folder: &Path,
    name: &str,
    options: &SaveOptions<'_>,
) -> Result<SavedFiles> {
    let files = SavedFiles::named(folder, name, options.pkcs12_password.is_some())?;
    fs::create_dir_all(folder).map_err(|e| Error::io(folder, e))?;
    let key_pem = match options.key_password {
        Some(password) => credential.key().encrypted_pkcs8_pem(password)?,
        None => credential.private_key_pem().to_string(),
    };
    write_secret(&files.private_key, key_pem.as_bytes())?;
    write_public(&files.certificate, credential.certificate_pem().as_bytes())?;
    write_public(&files.chain, credential.chain_pem().as_bytes())?;
    write_public(&files.full_chain, credential.full_chain_pem().as_bytes())?;
    if let (Some(pfx_path), Some(password)) = (&files.pkcs12, options.pkcs12_password) {
        let cn = credential
            .certificate()
            .info()
            .common_name
            .clone()
            .unwrap_or_else(|| name.to_string());
        let pfx = crate::pki::pkcs12::to_pkcs12(credential, password, options.legacy_pkcs12, &cn)?;
        write_secret(pfx_path, &pfx)?;
    }
    Ok(files)
}

/// File stems must not escape the folder or hide files.
fn check_file_stem(name: &str) -> Result<()> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0']) {
        return Err(Error::cert(format!(
            "{name:?} cannot be used as a file name (empty, hidden or containing a path separator)"
        )));
    }
    Ok(())
}

/// Turns a CN into a file stem: lower case, runs of other characters become one '-'.
pub fn slug(common_name: &str) -> String {
    let mut out = String::with_capacity(common_name.len());
    for c in common_name.chars() {
        if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches(|c| c == '-' || c == '.');
    if trimmed.is_empty() {
        "ca".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Writes a file readable by everyone (certificates are public).
pub fn write_public(path: &Path, data: &[u8]) -> Result<()> {
    fs::write(path, data).map_err(|e| Error::io(path, e))
}

/// Writes a file only its owner can read (mode 0600 on Unix), also tightening an existing
/// file's mode before writing to it.
pub fn write_secret(path: &Path, data: &[u8]) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| Error::io(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(path, e))?;
    }
    file.write_all(data).map_err(|e| Error::io(path, e))
}

/// Manifest formats for bulk issuance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    /// `manifest.csv` with a header row.
    Csv,
    /// `manifest.json`: an array of objects.
    Json,
}

impl ManifestFormat {
    /// Parses `csv` or `json`.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "csv" => Ok(ManifestFormat::Csv),
            "json" => Ok(ManifestFormat::Json),
            other => Err(Error::config(format!(
                "unknown manifest format {other:?}: use \"csv\" or \"json\""
            ))),
        }
    }
}

#[derive(Serialize)]
struct ManifestRow<'a> {
    registration_id: &'a str,
    serial_number: &'a str,
    thumbprint_sha1: &'a str,
    thumbprint_sha256: &'a str,
    not_after: String,
    certificate_path: String,
    private_key_path: String,
    chain_path: String,
    pkcs12_path: Option<String>,
}

/// Saves every device into `folder` (named by registration id) and, when asked, writes a
/// manifest; returns the saved paths in device order and the manifest path.
pub fn save_devices(
    devices: &[DeviceCredential],
    folder: &Path,
    options: &SaveOptions<'_>,
    manifest: Option<ManifestFormat>,
) -> Result<(Vec<SavedFiles>, Option<PathBuf>)> {
    let saved = devices
        .iter()
        .map(|d| save_credential(d.credential(), folder, d.registration_id(), options))
        .collect::<Result<Vec<_>>>()?;
    let Some(format) = manifest else {
        return Ok((saved, None));
    };
    let display = |p: &Path| p.display().to_string();
    let rows: Vec<ManifestRow<'_>> = devices
        .iter()
        .zip(&saved)
        .map(|(device, files)| {
            let info = device.credential().certificate().info();
            ManifestRow {
                registration_id: device.registration_id(),
                serial_number: &info.serial_number,
                thumbprint_sha1: &info.thumbprint_sha1,
                thumbprint_sha256: &info.thumbprint_sha256,
                not_after: iso_utc(info.not_after),
                certificate_path: display(&files.certificate),
                private_key_path: display(&files.private_key),
                chain_path: display(&files.chain),
                pkcs12_path: files.pkcs12.as_deref().map(display),
            }
        })
        .collect();
    let (path, body) = match format {
        ManifestFormat::Json => (
            folder.join("manifest.json"),
            serde_json::to_string_pretty(&rows)
                .map_err(|e| Error::cert_caused("manifest encoding failed", e))?,
        ),
        ManifestFormat::Csv => {
            let mut out = String::from(
                "registration_id,serial_number,thumbprint_sha1,thumbprint_sha256,not_after,certificate_path,private_key_path,chain_path,pkcs12_path\n",
            );
            for row in &rows {
                let fields = [
                    row.registration_id,
                    row.serial_number,
                    row.thumbprint_sha1,
                    row.thumbprint_sha256,
                    &row.not_after,
                    &row.certificate_path,
                    &row.private_key_path,
                    &row.chain_path,
                    row.pkcs12_path.as_deref().unwrap_or(""),
                ];
                let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                out.push_str(&line.join(","));
                out.push('\n');
            }
            (folder.join("manifest.csv"), out)
        }
    };
    write_public(&path, body.as_bytes())?;
    Ok((saved, Some(path)))
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn iso_utc(unix: i64) -> String {
    crate::pki::chain::format_time(unix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CaOptions, CertificateAuthority, KeyAlgorithm, Validity};

    #[test]
    fn a_save_writes_exactly_the_named_files() {
        let options = CaOptions {
            algorithm: KeyAlgorithm::EcP256,
            validity: Validity::days(1, None).unwrap(),
            path_length: None,
            organization: None,
        };
        let ca = CertificateAuthority::create_root("Files Root", &options).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let save = SaveOptions {
            pkcs12_password: Some(""),
            ..SaveOptions::default()
        };
        let saved = save_credential(ca.credential(), dir.path(), "root", &save).unwrap();
        let named = SavedFiles::named(dir.path(), "root", true).unwrap();
        assert_eq!(saved, named);
        let mut written: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        written.sort();
        let expected = [
            "root.cert.pem",
            "root.chain.pem",
            "root.fullchain.pem",
            "root.key.pem",
            "root.pfx",
        ];
        assert_eq!(written, expected);
        assert_eq!(
            SavedFiles::named(dir.path(), "root", false).unwrap().pkcs12,
            None
        );
    }

    #[test]
    fn a_name_that_would_leave_the_folder_has_no_files() {
        for name in ["", ".hidden", "../root", "a/b", "a\\b", "nul\0"] {
            assert!(
                SavedFiles::named(Path::new("certs"), name, false).is_err(),
                "{name:?}"
            );
        }
    }
}
