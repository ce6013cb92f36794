"""The Rust core's error kinds map onto dpskit's exception classes, and every kind is covered."""

from __future__ import annotations

import asyncio
import base64
import errno
import socket

import pytest

import dpskit
from dpskit import _native, errors

# kind -> (class, status carried by service errors or None)
EXPECTED: dict[str, tuple[type[Exception], int | None]] = {
    "config": (errors.ConfigError, None),
    "certificate": (errors.CertificateError, None),
    "transport": (errors.TransportError, None),
    "timeout": (errors.OperationTimeoutError, None),
    "protocol": (errors.ProtocolError, None),
    "service": (errors.ServiceError, 500),
    "authentication": (errors.AuthenticationError, 401),
    "not_found": (errors.NotFoundError, 404),
    "conflict": (errors.ConflictError, 409),
    "throttled": (errors.ThrottledError, 429),
    "registration_failed": (errors.RegistrationFailedError, None),
    "emulator": (errors.EmulatorError, None),
    # Missing files stay the built-in FileNotFoundError (an OSError), as Python users expect.
    "io": (FileNotFoundError, None),
}
OS_KINDS = {"io"}


def test_every_core_kind_has_an_expectation() -> None:
    # A new kind in the Rust core without a line in EXPECTED fails here, so it gets a test.
    kinds = _native._core_error_kinds()
    assert len(kinds) == len(set(kinds))
    assert set(kinds) == set(EXPECTED)


@pytest.mark.parametrize("kind", sorted(set(EXPECTED) - OS_KINDS))
def test_kind_raises_its_class(kind: str) -> None:
    cls, status = EXPECTED[kind]
    with pytest.raises(dpskit.DpsKitError) as info:
        _native._raise_core_error(kind, "msg from the core")
    error = info.value
    assert type(error) is cls
    assert isinstance(error, dpskit.DpsKitError)
    assert "msg from the core" in str(error)
    if status is not None:
        assert isinstance(error, errors.ServiceError)
        assert error.status == status


def test_io_kind_raises_file_not_found() -> None:
    # The core's sample io error is "no such file" on a fixed path; it must keep errno/filename.
    with pytest.raises(FileNotFoundError) as info:
        _native._raise_core_error("io", "msg")
    assert type(info.value) is FileNotFoundError
    assert not isinstance(info.value, dpskit.DpsKitError)
    assert info.value.errno == 2
    assert info.value.filename is not None


def test_classes_are_exported_from_the_package() -> None:
    for kind, (cls, _) in EXPECTED.items():
        if kind not in OS_KINDS:
            assert getattr(dpskit, cls.__name__) is cls
    assert dpskit.DpsKitError is errors.DpsKitError


def test_builtin_bases() -> None:
    assert issubclass(dpskit.CertificateError, ValueError)
    assert issubclass(dpskit.ConfigError, ValueError)
    assert issubclass(dpskit.TransportError, ConnectionError)
    assert issubclass(dpskit.OperationTimeoutError, TimeoutError)
    for cls in (
        dpskit.AuthenticationError,
        dpskit.NotFoundError,
        dpskit.ConflictError,
        dpskit.ThrottledError,
    ):
        assert issubclass(cls, dpskit.ServiceError)


def test_builtin_handlers_catch_core_errors() -> None:
    # Code that only knows the built-ins still catches dpskit's errors.
    with pytest.raises(ValueError, match=r"bad cert"):
        _native._raise_core_error("certificate", "bad cert")
    with pytest.raises(ConnectionError, match=r"reset"):
        _native._raise_core_error("transport", "reset")
    with pytest.raises(TimeoutError, match=r"late"):
        _native._raise_core_error("timeout", "late")
    with pytest.raises(OSError, match=r"reset"):  # ConnectionError is an OSError
        _native._raise_core_error("transport", "reset")


def test_real_certificate_error_comes_from_the_core() -> None:
    with pytest.raises(dpskit.CertificateError) as info:
        dpskit.Certificate.from_pem("garbage")
    assert type(info.value) is dpskit.CertificateError


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_refused_connection_is_raised_from_the_os_error() -> None:
    # The core keeps the cause: the TransportError is raised from the ConnectionRefusedError
    # the operating system gave, errno and all, with the message it always had.
    endpoint = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(dpskit.TransportError) as info:
        asyncio.run(
            dpskit.provision(
                endpoint,
                id_scope="0ne00000000",
                registration_id="dev-1",
                symmetric_key=base64.b64encode(b"k" * 32).decode(),
                timeout=30,
            )
        )
    error = info.value
    assert type(error) is dpskit.TransportError
    assert "connection to DPS failed for dev-1: cannot connect" in str(error)
    cause = error.__cause__
    assert isinstance(cause, ConnectionRefusedError), repr(cause)
    assert cause.errno == errno.ECONNREFUSED
    assert cause.filename is None


def test_a_cause_that_is_not_the_os_s_is_left_out() -> None:
    with pytest.raises(dpskit.CertificateError) as info:
        dpskit.Certificate.from_pem("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")
    assert "malformed PEM" in str(info.value)
    assert info.value.__cause__ is None
