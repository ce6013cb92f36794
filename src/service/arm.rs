//! Azure Resource Manager: a DPS instance's CA certificates and proof of possession, written
//! to the documented REST API (paths, `If-Match` etags, RFC 1123 dates).

use std::time::Duration;

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::pki::{Certificate, CertificateAuthority, Validity};
use crate::service::{RestTrust, failure, http_client, transport};

/// The ARM api-version for `Microsoft.Devices/provisioningServices` (GA, served by Azure and
/// the emulator alike).
pub const DPS_API_VERSION: &str = "2022-02-05";

/// Azure's public ARM endpoint.
pub const AZURE_ARM_ENDPOINT: &str = "https://management.azure.com";

/// A CA certificate as ARM describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct CaCertificateResource {
    /// Certificate name in the DPS.
    pub name: String,
    /// Current etag: pass it as `If-Match` to change the certificate.
    pub etag: String,
    /// Subject distinguished name.
    pub subject: String,
    /// SHA-1 thumbprint, upper-case hex.
    pub thumbprint: String,
    /// Proven by proof of possession (or declared verified on upload).
    pub is_verified: bool,
    /// Expiry as ARM writes it (RFC 1123).
    pub expiry: String,
    /// Upload time (RFC 1123).
    pub created: String,
    /// Last change (RFC 1123).
    pub updated: String,
    /// The verification code, in answers to `generateVerificationCode` only.
    pub verification_code: Option<String>,
}

impl CaCertificateResource {
    fn from_json(value: &Value) -> Result<Self> {
        let properties = &value["properties"];
        let text = |v: &Value| v.as_str().map(str::to_string);
        let name = text(&value["name"]).ok_or_else(|| {
            Error::Protocol(format!("certificate response without a name: {value}"))
        })?;
        Ok(CaCertificateResource {
            name,
            etag: text(&value["etag"]).unwrap_or_default(),
            subject: text(&properties["subject"]).unwrap_or_default(),
            thumbprint: text(&properties["thumbprint"]).unwrap_or_default(),
            is_verified: properties["isVerified"].as_bool().unwrap_or(false),
            expiry: text(&properties["expiry"]).unwrap_or_default(),
            created: text(&properties["created"]).unwrap_or_default(),
            updated: text(&properties["updated"]).unwrap_or_default(),
            verification_code: text(&properties["verificationCode"]),
        })
    }
}

/// A client for one subscription and resource group.
#[derive(Clone)]
pub struct ArmClient {
    http: reqwest::Client,
    endpoint: String,
    subscription_id: String,
    resource_group: String,
    token: String,
}

impl std::fmt::Debug for ArmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmClient")
            .field("endpoint", &self.endpoint)
            .field("subscription_id", &self.subscription_id)
            .field("resource_group", &self.resource_group)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl ArmClient {
    /// A client for `endpoint` (Azure's or the emulator's) that sends `token` as its bearer.
    pub fn new(
        endpoint: &str,
        subscription_id: &str,
        resource_group: &str,
        token: &str,
        trust: &RestTrust,
    ) -> Result<Self> {
        Ok(ArmClient {
            http: http_client(trust, Duration::from_secs(60))?,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            subscription_id: subscription_id.to_string(),
            resource_group: resource_group.to_string(),
            token: token.to_string(),
        })
    }

    fn certificates_url(&self, dps: &str) -> String {
        format!(
            "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Devices/provisioningServices/{}/certificates",
            self.endpoint,
            crate::sas::url_encode(&self.subscription_id),
            crate::sas::url_encode(&self.resource_group),
            crate::sas::url_encode(dps)
        )
    }

    async fn call(
        &self,
        method: reqwest::Method,
        url: String,
        if_match: Option<&str>,
        body: Option<Value>,
        what: &str,
    ) -> Result<Option<Value>> {
        let mut request = self
            .http
            .request(method, format!("{url}?api-version={DPS_API_VERSION}"))
            .bearer_auth(&self.token);
        if let Some(tag) = if_match {
            request = request.header(reqwest::header::IF_MATCH, tag);
        }
        request = match body {
            Some(body) => request.json(&body),
            // ARM rejects a POST without a length.
            None => request.header(reqwest::header::CONTENT_LENGTH, "0"),
        };
        let response = request.send().await.map_err(|e| transport(what, e))?;
        if !response.status().is_success() {
            return Err(failure(response, what).await);
        }
        let text = response.text().await.map_err(|e| transport(what, e))?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Protocol(format!("{what}: the answer is not JSON: {e}")))
    }

    async fn certificate_call(
        &self,
        method: reqwest::Method,
        url: String,
        if_match: Option<&str>,
        body: Option<Value>,
        what: &str,
    ) -> Result<CaCertificateResource> {
        let value = self
            .call(method, url, if_match, body, what)
            .await?
            .ok_or_else(|| Error::Protocol(format!("{what}: empty answer")))?;
        CaCertificateResource::from_json(&value)
    }

    /// Uploads (or, with the current `etag`, replaces) a CA certificate as PEM text, the way
    /// `az iot dps certificate create` sends it.
    pub async fn upload_ca_certificate(
        &self,
        dps: &str,
        name: &str,
        certificate: &Certificate,
        verified: bool,
        etag: Option<&str>,
    ) -> Result<CaCertificateResource> {
        let url = format!(
            "{}/{}",
            self.certificates_url(dps),
            crate::sas::url_encode(name)
        );
        let body = json!({"properties": {"certificate": certificate.pem().trim_end(), "isVerified": verified}});
        self.certificate_call(
            reqwest::Method::PUT,
            url,
            etag,
            Some(body),
            &format!("uploading CA certificate {name}"),
        )
        .await
    }

    /// One CA certificate.
    pub async fn ca_certificate(&self, dps: &str, name: &str) -> Result<CaCertificateResource> {
        let url = format!(
            "{}/{}",
            self.certificates_url(dps),
            crate::sas::url_encode(name)
        );
        self.certificate_call(
            reqwest::Method::GET,
            url,
            None,
            None,
            &format!("reading CA certificate {name}"),
        )
        .await
    }

    /// Every CA certificate of the DPS.
    pub async fn ca_certificates(&self, dps: &str) -> Result<Vec<CaCertificateResource>> {
        let what = format!("listing the CA certificates of {dps}");
        let value = self
            .call(
                reqwest::Method::GET,
                self.certificates_url(dps),
                None,
                None,
                &what,
            )
            .await?
            .unwrap_or_default();
        value["value"]
            .as_array()
            .map(|items| items.iter().map(CaCertificateResource::from_json).collect())
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    /// Deletes a CA certificate (ARM requires its current etag).
    pub async fn delete_ca_certificate(&self, dps: &str, name: &str, etag: &str) -> Result<()> {
        let url = format!(
            "{}/{}",
            self.certificates_url(dps),
            crate::sas::url_encode(name)
        );
        self.call(
            reqwest::Method::DELETE,
            url,
            Some(etag),
            None,
            &format!("deleting CA certificate {name}"),
        )
        .await
        .map(|_| ())
    }

    /// Asks for a verification code; the certificate's etag changes with it.
    pub async fn generate_verification_code(
        &self,
        dps: &str,
        name: &str,
        etag: &str,
    ) -> Result<CaCertificateResource> {
        let url = format!(
            "{}/{}/generateVerificationCode",
            self.certificates_url(dps),
            crate::sas::url_encode(name)
        );
        let resource = self
            .certificate_call(
                reqwest::Method::POST,
                url,
                Some(etag),
                None,
                &format!("generating a verification code for {name}"),
            )
            .await?;
        if resource.verification_code.is_none() {
            return Err(Error::Protocol(format!(
                "generating a verification code for {name}: the answer carries no code"
            )));
        }
        Ok(resource)
    }

    /// Sends the verification certificate (CN = the code, signed by the CA's key).
    pub async fn verify_certificate(
        &self,
        dps: &str,
        name: &str,
        etag: &str,
        verification: &Certificate,
    ) -> Result<CaCertificateResource> {
        let url = format!(
            "{}/{}/verify",
            self.certificates_url(dps),
            crate::sas::url_encode(name)
        );
        let body = json!({"certificate": verification.pem().trim_end()});
        self.certificate_call(
            reqwest::Method::POST,
            url,
            Some(etag),
            Some(body),
            &format!("verifying CA certificate {name}"),
        )
        .await
    }

    /// Proof of possession in one call: uploads the CA certificate when it is not there yet,
    /// asks for a code, signs a verification certificate with `authority`, and verifies it.
    pub async fn prove_possession(
        &self,
        dps: &str,
        name: &str,
        authority: &CertificateAuthority,
    ) -> Result<CaCertificateResource> {
        let certificate = authority.credential().certificate();
        let current = match self.ca_certificate(dps, name).await {
            Ok(existing)
                if existing
                    .thumbprint
                    .eq_ignore_ascii_case(&certificate.info().thumbprint_sha1) =>
            {
                existing
            }
            Ok(existing) => {
                return Err(Error::Config(format!(
                    "DPS {dps} already has a different certificate named {name} (thumbprint {}); \
                     delete it or choose another name",
                    existing.thumbprint
                )));
            }
            Err(Error::Service(s)) if s.status == 404 => {
                self.upload_ca_certificate(dps, name, certificate, false, None)
                    .await?
            }
            Err(other) => return Err(other),
        };
        if current.is_verified {
            return Ok(current);
        }
        let coded = self
            .generate_verification_code(dps, name, &current.etag)
            .await?;
        let code = coded.verification_code.as_deref().unwrap_or_default();
        let verification =
            authority.create_verification_certificate(code, Validity::days(1, None)?)?;
        self.verify_certificate(dps, name, &coded.etag, &verification)
            .await
    }
}
