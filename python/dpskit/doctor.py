"""``dpskit.doctor``: why a device cannot provision, and what to change, for the local cloud and
Azure alike; and :func:`explain_error`, what any SDK's error text means.

:func:`doctor` runs the core's checks (``dpskit._native.diagnose_device``) on the credential as
the device holds it (files, a PKCS#12 file, or a :class:`~dpskit.DeviceCertificate`), its server
trust bundle, then (given a :class:`~dpskit.Dps`) the DPS's CAs, enrollments, linked hubs and
registration, then (``connect=True``) one traced provisioning attempt. A
:class:`DoctorReport` lists every check, problems first, and the causes found; it prints as
a table and serialises to JSON. The rules live in Rust; this module only gathers the inputs and
presents the answer.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import textwrap
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpskit._native import (
    DeviceCertificate,
    DoctorAttempt,
    DoctorCheck,
    ErrorExplanation,
    TraceStep,
    diagnose_device,
    doctor_cause_names,
)
from dpskit._native import DoctorReport as _NativeReport
from dpskit._native import explain_error as _explain_error
from dpskit.cloud.local import LocalCloud
from dpskit.device import _clock_offset_ms
from dpskit.errors import ConfigError

if TYPE_CHECKING:
    from dpskit.cloud import Dps

__all__ = [
    "CAUSES",
    "DoctorAttempt",
    "DoctorCheck",
    "DoctorReport",
    "ErrorExplanation",
    "TraceStep",
    "doctor",
    "explain_error",
    "explanation_dict",
]

#: Every cause name a report can give, in a fixed order (``missing-intermediate``, ...).
CAUSES: tuple[str, ...] = tuple(doctor_cause_names())

_VERDICT_MARK = {"problem": "PROBLEM", "warning": "warning", "ok": "ok", "skipped": "skipped"}


def _check_dict(check: DoctorCheck) -> dict[str, Any]:
    return {
        "id": check.id,
        "title": check.title,
        "verdict": check.verdict,
        "evidence": check.evidence,
        "fix": check.fix,
        "cause": check.cause,
    }


def _attempt_dict(attempt: DoctorAttempt) -> dict[str, Any]:
    return {
        "succeeded": attempt.succeeded,
        "status": attempt.status,
        "error_code": attempt.error_code,
        "message": attempt.message,
        "assigned_hub": attempt.assigned_hub,
        "device_id": attempt.device_id,
        "causes": list(attempt.causes),
        "trace": [
            {"at_ms": step.at_ms, "step": step.step, "detail": step.detail}
            for step in attempt.trace
        ],
    }


def _wrap(text: str, width: int) -> list[str]:
    # Paths and ids hold hyphens: break lines at spaces, and inside a word only when it is
    # longer than the column.
    return textwrap.wrap(text, width, break_on_hyphens=False)


class DoctorReport:
    """The doctor's answer for one device: every check (problems first, then warnings, then
    the rest), the traced attempt when one was made, and the causes found.

    ``str(report)`` is the terminal table; ``to_dict()`` / ``to_json()`` the same as data
    (what ``dpskit doctor device --json`` prints)."""

    __slots__ = ("_native", "checks")

    def __init__(self, native: _NativeReport) -> None:
        self._native = native
        #: Every check, failing first.
        self.checks: tuple[DoctorCheck, ...] = tuple(native.checks)

    @property
    def registration_id(self) -> str | None:
        """The registration id checked (given, or the leaf's CN)."""
        return self._native.registration_id

    @property
    def attempt(self) -> DoctorAttempt | None:
        """The traced provisioning attempt (``connect=True``), or ``None``."""
        return self._native.attempt

    @property
    def causes(self) -> tuple[str, ...]:
        """The distinct causes of the problems found (the attempt's refusal included), in the
        order found: names from :data:`CAUSES`."""
        return tuple(self._native.causes)

    @property
    def healthy(self) -> bool:
        """No problem found and no failed attempt."""
        return self._native.healthy

    @property
    def problems(self) -> tuple[DoctorCheck, ...]:
        """The checks whose verdict is ``problem``."""
        return tuple(c for c in self.checks if c.verdict == "problem")

    @property
    def warnings(self) -> tuple[DoctorCheck, ...]:
        """The checks whose verdict is ``warning``."""
        return tuple(c for c in self.checks if c.verdict == "warning")

    def check(self, check_id: str) -> DoctorCheck:
        """The check called ``check_id`` (``chain.order``, ...); ``KeyError`` naming the ids
        run when there is none."""
        for c in self.checks:
            if c.id == check_id:
                return c
        ids = ", ".join(c.id for c in self.checks)
        raise KeyError(f"no check {check_id!r} in this report; its checks: {ids}")

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "registration_id": self.registration_id,
            "healthy": self.healthy,
            "causes": list(self.causes),
            "checks": [_check_dict(c) for c in self.checks],
            "attempt": _attempt_dict(self.attempt) if self.attempt is not None else None,
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    def _summary(self) -> str:
        who = self.registration_id or "(no registration id)"
        if self.healthy:
            state = "healthy"
        else:
            problems = len(self.problems)
            state = f"{problems} problem{'s' if problems != 1 else ''}"
            if self.attempt is not None and not self.attempt.succeeded and not problems:
                state = "the attempt failed"
        warnings = len(self.warnings)
        if warnings:
            state += f", {warnings} warning{'s' if warnings != 1 else ''}"
        return f"dpskit doctor: {who}: {state}"

    def table(self, width: int | None = None) -> str:
        """The terminal table, wrapped to ``width`` columns (the terminal's by default)."""
        width = width or shutil.get_terminal_size((100, 24)).columns
        rows = [
            (_VERDICT_MARK.get(c.verdict, c.verdict), c.id, c.evidence, c.fix or "")
            for c in self.checks
        ]
        lines = [self._summary()]
        verdict_w = max(len("VERDICT"), *(len(r[0]) for r in rows)) if rows else 7
        check_w = min(max(len("CHECK"), *(len(r[1]) for r in rows)) if rows else 5, 28)
        rest = width - verdict_w - check_w - 6
        if rest < 40:
            # Too narrow for columns: one block per check.
            for verdict, check_id, evidence, fix in rows:
                lines.append(f"{verdict} {check_id}")
                lines += ["    " + line for line in _wrap(evidence, width - 4)]
                if fix:
                    lines += ["    " + line for line in _wrap(f"fix: {fix}", width - 4)]
        else:
            evidence_w = rest * 11 // 20
            fix_w = rest - evidence_w
            header = ("VERDICT", "CHECK", "EVIDENCE", "FIX")
            for verdict, check_id, evidence, fix in [header, *rows]:
                cells = zip_longest(
                    [verdict],
                    _wrap(check_id, check_w) or [""],
                    _wrap(evidence, evidence_w) or [""],
                    _wrap(fix, fix_w) or [""],
                    fillvalue="",
                )
                for a, b, c, d in cells:
                    line = f"{a:<{verdict_w}}  {b:<{check_w}}  {c:<{evidence_w}}  {d}"
                    lines.append(line.rstrip())
        attempt = self.attempt
        if attempt is not None:
            outcome = "succeeded" if attempt.succeeded else "failed"
            lines.append(f"attempt: {outcome}: {attempt.message}")
            for step in attempt.trace:
                lines.append(f"  {step.at_ms:8.1f} ms  {step.step:<10} {step.detail}")
        if self.causes:
            lines.append("causes: " + ", ".join(self.causes))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        colours = {"problem": "#c62828", "warning": "#ef6c00", "ok": "#2e7d32"}
        rows = []
        for c in self.checks:
            colour = colours.get(c.verdict, "#757575")
            rows.append(
                "<tr>"
                f'<td style="color:{colour};font-weight:bold">{html.escape(c.verdict)}</td>'
                f"<td><code>{html.escape(c.id)}</code></td>"
                f"<td>{html.escape(c.evidence)}</td>"
                f"<td>{html.escape(c.fix or '')}</td>"
                "</tr>"
            )
        causes = f"<p>causes: {html.escape(', '.join(self.causes))}</p>" if self.causes else ""
        attempt = ""
        if self.attempt is not None:
            outcome = "succeeded" if self.attempt.succeeded else "failed"
            attempt = f"<p>attempt {outcome}: {html.escape(self.attempt.message)}</p>"
        return (
            f"<p><b>{html.escape(self._summary())}</b></p>"
            "<table><tr><th>verdict</th><th>check</th><th>evidence</th><th>fix</th></tr>"
            + "".join(rows)
            + "</table>"
            + attempt
            + causes
        )

    def __repr__(self) -> str:
        # Ids, counts and cause names only: nothing a credential holds.
        return (
            f"<DoctorReport registration_id={self.registration_id!r} healthy={self.healthy} "
            f"causes={self.causes!r} checks={len(self.checks)}>"
        )


def _path(value: str | os.PathLike[str] | None) -> Path | None:
    return Path(value) if value is not None else None


def _password(password: str | bytes | None, password_env: str | None) -> bytes | None:
    if password is not None and password_env is not None:
        raise ConfigError("give password or password_env, not both")
    if password_env is not None:
        value = os.environ.get(password_env)
        if value is None:
            raise ConfigError(f"password_env {password_env}: that variable is not set")
        return value.encode()
    if isinstance(password, str):
        return password.encode()
    return password


def _trust_bundle(trust: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The device's server trust bundle: PEM text, or a file the core reads (a file that
    cannot be read is the ``server.trust`` problem, like any unreadable input)."""
    if trust is None:
        return {}
    if isinstance(trust, str) and "-----BEGIN" in trust:
        return {"trust_bundle_pem": trust}
    return {"trust_bundle_path": Path(trust)}


def doctor(
    certificate: DeviceCertificate | str | os.PathLike[str] | None = None,
    *,
    key: str | os.PathLike[str] | None = None,
    chain: str | os.PathLike[str] | None = None,
    pkcs12: str | os.PathLike[str] | None = None,
    password: str | bytes | None = None,
    password_env: str | None = None,
    registration_id: str | None = None,
    trust: str | os.PathLike[str] | None = None,
    dps: Dps | None = None,
    connect: bool = False,
    timeout: float = 30.0,
) -> DoctorReport:
    """Diagnose why a device cannot provision, and say what to change.

    The credential is ``certificate`` (a :class:`~dpskit.DeviceCertificate`, or a PEM file of
    the leaf, optionally followed by its chain) with ``key`` and ``chain`` files, or a
    ``pkcs12`` file. ``password`` (or the environment variable ``password_env``) opens the
    PKCS#12 file or an encrypted key. ``registration_id`` is the id the device registers with
    (the leaf's CN by default). ``trust`` is the device's server trust bundle (PEM text or a
    file). With ``dps`` the DPS's CAs, enrollments, linked hubs and registration are checked;
    ``connect=True`` also makes one traced provisioning attempt against it. Files that do not
    parse are reported as problems, not raised; contradictory inputs raise ``ConfigError``.
    Validity is judged at a :class:`~dpskit.LocalCloud`'s own time (which ``advance_time``
    may have moved), else at the system's. The call blocks with the GIL released;
    ``timeout`` bounds the traced attempt (a DPS slower than that is a timed-out attempt in
    the report, the checks' findings kept).
    """
    if pkcs12 is not None and certificate is not None:
        raise ConfigError("give a certificate or a pkcs12 file, not both")
    if certificate is None and pkcs12 is None:
        raise ConfigError("give the device's certificate (or its pkcs12 file)")
    if (key is not None or chain is not None) and (
        pkcs12 is not None or isinstance(certificate, DeviceCertificate)
    ):
        raise ConfigError(
            "key and chain go with a certificate file; a pkcs12 file or a DeviceCertificate "
            "holds its own"
        )
    if connect and dps is None:
        raise ConfigError("connect=True needs the dps to attempt provisioning against")
    secret = _password(password, password_env)
    if secret is not None and isinstance(certificate, DeviceCertificate):
        raise ConfigError("a DeviceCertificate is already open: it takes no password")
    options: dict[str, Any] = _trust_bundle(trust)
    if dps is not None:
        cloud = dps._cloud
        options.update(rest=dps._rest, dps_name=dps.name)
        # A local cloud's servers chain to its own CA; Azure's to the public roots.
        if cloud._has_emulator_api:
            options["local_server_pem"] = cloud.trust_pem
        if isinstance(cloud, LocalCloud):
            # Validity is judged in the cloud's time, which advance_time may have moved.
            options["clock_offset_ms"] = _clock_offset_ms(cloud)
        if connect:
            options.update(
                connect_host=dps.device_host,
                connect_port=dps.device_port,
                id_scope=dps.id_scope,
                cloud_trust_pem=cloud.trust_pem,
            )
    if isinstance(certificate, DeviceCertificate):
        options["certificate"] = certificate
    elif pkcs12 is not None:
        options["pkcs12_path"] = Path(pkcs12)
        try:
            options["pkcs12_password"] = secret.decode() if secret is not None else None
        except UnicodeDecodeError as exc:
            raise ConfigError("a PKCS#12 password must be UTF-8 text") from exc
    else:
        options.update(
            certificate_path=_path(certificate),
            chain_path=_path(chain),
            key_path=_path(key),
            key_password=secret,
        )
    native = diagnose_device(
        registration_id=registration_id,
        timeout=timeout,
        **options,
    )
    return DoctorReport(native)


def explain_error(text: str | int) -> ErrorExplanation:
    """What an error means: a code (``401002``), a JSON body, an HTTP status, a CONNACK
    return code (``CONNACK 5``, ``rc==5``), a TLS library's message or an SDK's own words.
    Unknown text gives ``known=False`` and general advice, never an exception."""
    return _explain_error(str(text))


def explanation_dict(explanation: ErrorExplanation) -> dict[str, Any]:
    """An :class:`ErrorExplanation` as JSON-ready data."""
    return {
        "matched": explanation.matched,
        "known": explanation.known,
        "code": explanation.code,
        "status": explanation.status,
        "service": explanation.service,
        "title": explanation.title,
        "meaning": explanation.meaning,
        "causes": list(explanation.causes),
        "cause_names": list(explanation.cause_names),
    }
