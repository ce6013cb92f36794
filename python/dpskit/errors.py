"""The exception tree of dpskit.

Every error dpskit raises on purpose is a :class:`DpsKitError`. The classes also derive from the
closest built-in exception (``ValueError``, ``ConnectionError``, ``TimeoutError``) so that generic
handlers keep working. The Rust core raises these same classes (it imports them from here).
When the root cause is the operating system's (a refused connection, a missing file), the error is
raised from that :class:`OSError` (its ``__cause__``, errno and filename kept).
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CertificateError",
    "ConfigError",
    "ConflictError",
    "DpsKitError",
    "EmulatorError",
    "NotFoundError",
    "OperationTimeoutError",
    "ProtocolError",
    "RegistrationFailedError",
    "ServiceError",
    "ThrottledError",
    "TransportError",
]


class DpsKitError(Exception):
    """Base class of every error dpskit raises on purpose."""


class ConfigError(DpsKitError, ValueError):
    """An argument or a configuration value is invalid."""


class CertificateError(DpsKitError, ValueError):
    """A certificate, key, CSR, chain or registration id is invalid or cannot be used."""


class TransportError(DpsKitError, ConnectionError):
    """A network connection (TCP, TLS, MQTT or HTTP) failed."""


class OperationTimeoutError(DpsKitError, TimeoutError):
    """An operation did not finish before its deadline."""


class ProtocolError(DpsKitError):
    """The peer sent something that does not follow the protocol."""


class ServiceError(DpsKitError):
    """A service (DPS, IoT Hub, ARM or the emulator) refused a request.

    Attributes mirror Azure's error bodies: the HTTP-like ``status``, Azure's numeric
    ``error_code`` (e.g. ``401002``), the ``message``, the ``tracking_id`` and, for throttling,
    ``retry_after`` in seconds.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: int | None = None,
        tracking_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code
        self.tracking_id = tracking_id
        self.retry_after = retry_after


class AuthenticationError(ServiceError):
    """The service rejected the credentials (401/403)."""


class NotFoundError(ServiceError):
    """The resource does not exist (404)."""


class ConflictError(ServiceError):
    """The resource exists already or its etag is stale (409/412)."""


class ThrottledError(ServiceError):
    """The service throttled the request (429); see ``retry_after``."""


class RegistrationFailedError(DpsKitError):
    """DPS answered a registration with ``failed`` or refused it.

    ``status`` is the registration status or HTTP-like status, ``error_code`` Azure's numeric
    code and ``error_message`` Azure's message; ``str(error)`` adds dpskit's diagnosis.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | str | None = None,
        error_code: int | None = None,
        error_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.error_message = error_message


class EmulatorError(DpsKitError):
    """The embedded emulator could not start, stop or keep its state."""
