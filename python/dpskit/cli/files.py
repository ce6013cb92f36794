"""The certificate folder the commands share: where a CA's or a device's files are (named by
the core's one rule, ``dpskit._native.credential_files``), loading an issuing CA from it,
writing public and owner-only files, and passwords from environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from dpskit._native import CertificateAuthority, credential_files, write_secret
from dpskit.cli.output import _display
from dpskit.errors import ConfigError


def _password_from_env(variable: str | None, *, option: str) -> str | None:
    """Read a password from the environment variable named by a ``--...-env`` option."""
    if variable is None:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise ConfigError(f"{option} {variable}: environment variable {variable} is not set")
    return value


def _write_private(path: Path, data: bytes) -> Path:
    """Write secret material readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The core's one rule: created 0600, an existing file tightened before the secret is in it.
    write_secret(path, data)
    return path


def _write_public(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="ascii")
    return path


def _files(folder: Path, name: str) -> dict[str, Path]:
    """The files of the CA or device ``name`` in ``folder`` (``certificate``, ``private_key``,
    ``chain``, ``full_chain``, ``pkcs12``), named as the core saves them."""
    return credential_files(folder, name)


def _verification_file(folder: Path, ca: str) -> Path:
    """Where the proof-of-possession certificate for the CA ``ca`` is written."""
    return folder / f"verification-{ca}.cert.pem"


def _refuse_overwrite(folder: Path, name: str, force: bool) -> None:
    key = _files(folder, name)["private_key"]
    if key.exists() and not force:
        raise ConfigError(
            f"{_display(key)} exists already; pass --force to replace this CA "
            "(certificates it issued would no longer chain to a CA you hold)"
        )


def _load_issuer(folder: Path, name: str, password_env: str | None) -> CertificateAuthority:
    """Load the CA ``name`` from ``folder``, with its issuers when a full chain was saved."""
    files = _files(folder, name)
    cert, key = files["certificate"], files["private_key"]
    if not cert.exists() or not key.exists():
        missing = cert if not cert.exists() else key
        raise ConfigError(
            f"issuer '{name}' not found: {_display(missing)} does not exist "
            f"(create it with 'dpskit certs root' or 'dpskit certs intermediate', "
            f"or point --dir/--issuer at it)"
        )
    # The full chain lets the loaded CA know its root, so what it issues gets full chains too.
    full_chain = files["full_chain"]
    source = full_chain if full_chain.exists() else cert
    password = _password_from_env(password_env, option="--issuer-key-password-env")
    return CertificateAuthority.load(source, key, password=password)
