"""Request recording on the local cloud: ``LocalCloud.record_requests()`` and the requests it
saw, secrets already left out by the emulator."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Literal

from dpskit._native import Emulator
from dpskit.errors import ConfigError


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTPS request the local cloud served (ARM, the DPS or the hub service API), as
    ``LocalCloud.record_requests`` recorded it after authenticating it. Secrets are never kept:
    no ``Authorization`` header (only ``headers``' short allowlist), and keys, connection string
    keys and ``sig``/``code`` values replaced by ``"<redacted>"``."""

    sequence: int
    at: datetime
    api: Literal["arm", "dps", "hub"]
    method: str
    path: str
    """As sent: percent-encoding kept, no query."""
    query: dict[str, str]
    """Percent-decoded query parameters (``api-version`` among them)."""
    headers: dict[str, str]
    """``accept``, ``content-type``, ``if-match``, ``if-none-match``, ``x-ms-continuation``,
    ``x-ms-max-item-count`` when sent (names lower case)."""
    body: Any
    """The JSON body parsed, a body that is not JSON as text, or ``None`` (no body, or one
    longer than 64 KiB: see ``body_kind``)."""
    body_kind: Literal["empty", "json", "text", "omitted"]
    body_size: int
    status: int
    """What the local cloud answered."""

    @property
    def api_version(self) -> str | None:
        """The ``api-version`` query parameter."""
        return next((v for k, v in self.query.items() if k.lower() == "api-version"), None)

    def header(self, name: str) -> str | None:
        """A recorded header, by case-insensitive name."""
        return self.headers.get(name.lower())

    def __str__(self) -> str:
        return f"{self.method} {self.path}?{'&'.join(f'{k}={v}' for k, v in self.query.items())}"

    @classmethod
    def _from_native(cls, record: tuple[Any, ...]) -> RecordedRequest:
        (sequence, at, api, method, path, query, headers, body_kind, body, size, status) = record
        return cls(
            sequence=sequence,
            at=datetime.fromtimestamp(at, tz=timezone.utc),
            api=api,
            method=method,
            path=path,
            query=dict(query),
            headers=dict(headers),
            body=body,
            body_kind=body_kind,
            body_size=size,
            status=status,
        )


class RequestRecording:
    """The HTTPS requests served while recording (``with cloud.record_requests() as r:``):
    every ARM, DPS service and hub service request the local cloud authenticated, from dpskit,
    the official SDKs or anything else. Read ``requests`` inside the block (live) or after it
    (what the block saw). The local cloud keeps the last 1,000 requests of all recordings;
    ``dropped`` counts this recording's requests lost to that bound."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator
        self._start: int | None = None
        self._result: tuple[list[RecordedRequest], int] | None = None

    def __enter__(self) -> RequestRecording:
        if self._start is not None:
            raise ConfigError("a request recording cannot be started twice")
        self._start = self._emulator.start_recording()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._result is None and self._start is not None:
            try:
                self._result = self._read()
            finally:
                self._emulator.stop_recording()

    def _read(self) -> tuple[list[RecordedRequest], int]:
        if self._start is None:
            return [], 0
        requests, dropped = self._emulator.recorded_requests(self._start)
        return [RecordedRequest._from_native(r) for r in requests], dropped

    @property
    def requests(self) -> list[RecordedRequest]:
        """The recorded requests, oldest first."""
        return list(self._result[0]) if self._result is not None else self._read()[0]

    @property
    def dropped(self) -> int:
        """How many of this recording's requests were dropped to keep the bound."""
        return self._result[1] if self._result is not None else self._read()[1]

    def __repr__(self) -> str:
        state = "done" if self._result is not None else "recording"
        return f"<RequestRecording {state} requests={len(self.requests)}>"
