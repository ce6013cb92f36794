"""Type stubs for dpskit's Rust core (``dpskit._native``), checked by ``mypy.stubtest``."""

import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal, final

_StrPath = str | os.PathLike[str]

__all__ = [
    "ALGORITHMS",
    "Certificate",
    "CertificateAuthority",
    "DeviceCertificate",
    "_core_error_kinds",
    "_raise_core_error",
    "validate_registration_id",
    "verify_chain",
]

ALGORITHMS: tuple[str, ...]

@final
class Certificate:
    """A parsed X.509 certificate (public material only)."""

    @staticmethod
    def from_pem(data: str | bytes) -> Certificate: ...
    @staticmethod
    def from_der(data: bytes) -> Certificate: ...
    @staticmethod
    def from_pem_chain(data: str | bytes) -> list[Certificate]: ...
    @staticmethod
    def load(path: _StrPath) -> Certificate: ...
    @staticmethod
    def load_all(path: _StrPath) -> list[Certificate]: ...
    @property
    def pem(self) -> str: ...
    @property
    def der(self) -> bytes: ...
    @property
    def subject(self) -> str: ...
    @property
    def issuer(self) -> str: ...
    @property
    def common_name(self) -> str | None: ...
    @property
    def issuer_common_name(self) -> str | None: ...
    @property
    def serial_number(self) -> str: ...
    @property
    def thumbprint_sha1(self) -> str: ...
    @property
    def thumbprint_sha256(self) -> str: ...
    @property
    def not_before(self) -> datetime: ...
    @property
    def not_after(self) -> datetime: ...
    @property
    def is_ca(self) -> bool: ...
    @property
    def path_length(self) -> int | None: ...
    @property
    def key_algorithm(self) -> str: ...
    @property
    def signature_algorithm(self) -> str: ...
    @property
    def key_usage(self) -> list[str]: ...
    @property
    def extended_key_usage(self) -> list[str]: ...
    @property
    def subject_key_identifier(self) -> str | None: ...
    @property
    def authority_key_identifier(self) -> str | None: ...
    @property
    def is_self_signed(self) -> bool: ...
    def is_valid_at(self, when: datetime | None = None) -> bool: ...
    def save(self, path: _StrPath) -> Path: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class DeviceCertificate:
    """A device (leaf) certificate with its private key and the chain of its issuers."""

    @staticmethod
    def from_pem(
        certificate_pem: str | bytes,
        private_key_pem: str | bytes,
        *,
        password: str | bytes | None = None,
    ) -> DeviceCertificate: ...
    @staticmethod
    def load(
        certificate_path: _StrPath,
        private_key_path: _StrPath,
        *,
        password: str | bytes | None = None,
    ) -> DeviceCertificate: ...
    @staticmethod
    def from_pkcs12(data: bytes, password: str = "") -> DeviceCertificate: ...
    @property
    def registration_id(self) -> str: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def certificate(self) -> Certificate: ...
    @property
    def issuers(self) -> list[Certificate]: ...
    @property
    def certificate_pem(self) -> str: ...
    @property
    def certificate_der(self) -> bytes: ...
    @property
    def private_key_pem(self) -> str: ...
    @property
    def private_key_der(self) -> bytes: ...
    @property
    def chain_pem(self) -> str: ...
    @property
    def full_chain_pem(self) -> str: ...
    def encrypted_private_key_pem(self, password: str | bytes) -> str: ...
    def to_pkcs12(self, password: str = "", *, legacy: bool = False) -> bytes: ...
    def save(
        self,
        folder: _StrPath,
        *,
        name: str | None = None,
        pkcs12_password: str = "",
        legacy_pkcs12: bool = False,
    ) -> dict[str, Path]: ...

@final
class CertificateAuthority:
    """A CA certificate with its private key, able to issue CAs, devices and PoP certificates."""

    @staticmethod
    def create_root(
        common_name: str,
        *,
        algorithm: str = "ec-p256",
        days: int = 3650,
        path_length: int | None = None,
        organization: str | None = None,
        not_before: datetime | None = None,
    ) -> CertificateAuthority: ...
    @staticmethod
    def from_pem(
        certificate_pem: str | bytes,
        private_key_pem: str | bytes,
        *,
        password: str | bytes | None = None,
    ) -> CertificateAuthority: ...
    @staticmethod
    def load(
        certificate_path: _StrPath,
        private_key_path: _StrPath,
        *,
        password: str | bytes | None = None,
    ) -> CertificateAuthority: ...
    def create_intermediate(
        self,
        common_name: str,
        *,
        algorithm: str = "ec-p256",
        days: int = 1825,
        path_length: int | None = 0,
        organization: str | None = None,
        not_before: datetime | None = None,
    ) -> CertificateAuthority: ...
    def issue_device(
        self,
        registration_id: str,
        *,
        algorithm: str = "ec-p256",
        days: int = 365,
        not_before: datetime | None = None,
    ) -> DeviceCertificate: ...
    def issue_devices(
        self,
        registration_ids: Iterable[str],
        *,
        algorithm: str = "ec-p256",
        days: int = 365,
        not_before: datetime | None = None,
        output_dir: _StrPath | None = None,
        manifest: Literal["csv", "json"] | None = None,
        pkcs12_password: str | None = None,
    ) -> list[DeviceCertificate]: ...
    def create_verification_certificate(
        self, verification_code: str, *, days: int = 30
    ) -> Certificate: ...
    def sign_csr(
        self,
        csr_pem: str | bytes,
        *,
        registration_id: str | None = None,
        days: int = 365,
        not_before: datetime | None = None,
    ) -> Certificate: ...
    @property
    def common_name(self) -> str: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def certificate(self) -> Certificate: ...
    @property
    def issuers(self) -> list[Certificate]: ...
    @property
    def certificate_pem(self) -> str: ...
    @property
    def certificate_der(self) -> bytes: ...
    @property
    def private_key_pem(self) -> str: ...
    @property
    def private_key_der(self) -> bytes: ...
    @property
    def chain_pem(self) -> str: ...
    @property
    def full_chain_pem(self) -> str: ...
    def encrypted_private_key_pem(self, password: str | bytes) -> str: ...
    def to_pkcs12(self, password: str = "", *, legacy: bool = False) -> bytes: ...
    def save(
        self,
        folder: _StrPath,
        *,
        name: str | None = None,
        key_password: str | bytes | None = None,
    ) -> dict[str, Path]: ...

def verify_chain(
    leaf: Certificate,
    intermediates: Sequence[Certificate] = (),
    anchors: Sequence[Certificate] = (),
    *,
    at: datetime | None = None,
) -> list[Certificate]: ...
def validate_registration_id(registration_id: str, *, x509: bool = True) -> None: ...
def _raise_core_error(kind: str, message: str) -> None: ...
def _core_error_kinds() -> list[str]: ...
