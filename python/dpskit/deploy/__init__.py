"""Manifests that run dpskit on a scheduler: :func:`render_fleet_job` fills the shipped
template ``fleet-indexed-job.yaml`` (a Kubernetes Indexed Job whose pods each run one shard of a
fleet against Azure, ``dpskit fleet --shard auto --no-setup``) with validated values. It is
what ``dpskit fleet kubernetes`` prints.

The template is plain text with ``${name}`` placeholders, filled by a regular expression (no
YAML library needed; ``$(VAR)`` is left to Kubernetes). Every string is written as a
double-quoted YAML scalar (JSON's escaping, which YAML reads alike) and names must be DNS-1123
names besides, so no value can add a key or a document.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from importlib import resources

from dpskit.errors import ConfigError

__all__ = ["FLEET_JOB_TEMPLATE", "fleet_job_template", "render_fleet_job", "shard_memory_mib"]

#: The template's file name inside this package.
FLEET_JOB_TEMPLATE = "fleet-indexed-job.yaml"

#: What one connected device costs a shard's process (its certificate and key, its TLS and
#: MQTT session, its telemetry stream and its rows of results): 39-42 KB measured with two
#: messages each (tests/benchmarks/bench_fleet_workers.py, 2026-12-08), rounded up. A plan that
#: records many messages per device needs more: give --memory.
DEVICE_KIB = 48
#: The Python interpreter, the native core and the results frames' libraries (pandas, pyarrow).
RUNTIME_MIB = 256

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# A registry, path, tag and digest: letters, digits and . _ - / : @ only (no spaces, quotes or
# line breaks).
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}")
# Kubernetes quantities as the template uses them: 500m, 1, 1.5, 512Mi, 2Gi.
_CPU = re.compile(r"([1-9][0-9]{0,5}m|[0-9]{1,4}(\.[0-9]{1,3})?)")
_MEMORY = re.compile(r"[1-9][0-9]{0,6}(Ki|Mi|Gi|Ti|k|M|G|T)?")
_MEMORY_UNITS = {"": 1, "k": 1000, "M": 10**6, "G": 10**9, "T": 10**12}
_MEMORY_UNITS.update({"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40})


# Only ${name} is ours: Kubernetes expands $(VAR) in args itself, and a lone $ stays text.
_PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")


def _label(what: str, value: str) -> str:
    if not isinstance(value, str) or not _LABEL.fullmatch(value):
        raise ConfigError(
            f"{what} {value!r} is not a DNS-1123 label (1-63 lower-case letters, digits and "
            "'-', starting and ending with a letter or digit)"
        )
    return value


def _subdomain(what: str, value: str) -> str:
    if not isinstance(value, str) or len(value) > 253 or not _SUBDOMAIN.fullmatch(value):
        raise ConfigError(
            f"{what} {value!r} is not a DNS-1123 name (1-253 lower-case letters, digits, '-' "
            "and '.', starting and ending with a letter or digit)"
        )
    return value


def _count(what: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{what} must be an integer of at least {low}, not {value!r}")
    return value


def _memory_bytes(text: str) -> int:
    match = _MEMORY.fullmatch(text)
    if match is None:
        raise ConfigError(f"memory {text!r} is not a Kubernetes quantity such as 512Mi or 2Gi")
    unit = match.group(1) or ""
    return int(text[: len(text) - len(unit)]) * _MEMORY_UNITS[unit]


def shard_memory_mib(devices: int, shards: int) -> int:
    """The memory a shard's pod requests, in MiB: :data:`RUNTIME_MIB` plus
    :data:`DEVICE_KIB` per device of the largest shard (``ceil(devices / shards)``)."""
    per_shard = math.ceil(devices / shards)
    return RUNTIME_MIB + math.ceil(per_shard * DEVICE_KIB / 1024)


def _quoted(value: str) -> str:
    """A double-quoted YAML scalar: JSON's escapes are YAML's, so quotes, backslashes and line
    breaks stay inside the string."""
    return json.dumps(value, ensure_ascii=True)


def _argument(value: str) -> str:
    # Kubernetes expands $(VAR) in args and reads $$ as one $: a value's $ stays a $.
    return _quoted(value.replace("$", "$$"))


def _continued(items: Sequence[str]) -> str:
    """``items`` as the rest of the template's ``args`` flow sequence, a new line when one
    grows long. A flow sequence's lines need only more indentation than its key; this one
    lines them up under the first."""
    lines = [""]
    for item in items:
        if lines[-1] and len(lines[-1]) + len(item) > 80:
            lines.append("")
        lines[-1] += f", {item}" if lines[-1] else item
    return ",\n                 ".join(lines)


def render_fleet_job(
    *,
    shards: int,
    devices: int,
    image: str,
    name: str = "dpskit-fleet",
    namespace: str = "default",
    results_claim: str = "dpskit-results",
    fleet_claim: str = "dpskit-fleet",
    secret: str = "dpskit-azure",  # noqa: S107 (a Secret's name, not a password)
    options: Sequence[str] = (),
    prepare: str = "",
    retries: int = 2,
    ttl_seconds: int = 86_400,
    cpu: str = "1",
    memory: str | None = None,
) -> str:
    """The Indexed Job (YAML text) that runs a fleet of ``devices`` against Azure as
    ``shards`` pods, from ``image`` (which has ``dpskit`` on its PATH).

    Each pod runs ``dpskit fleet --shard auto --no-setup --azure --dir /fleet --devices
    DEVICES OPTIONS... --out /results/shard-<index>.parquet``: ``options`` are further
    ``dpskit fleet`` arguments (the telemetry plan, prefix, seed). ``fleet_claim`` holds what
    ``dpskit fleet prepare`` wrote (mounted read-only at /fleet), ``results_claim`` takes the
    results (/results), ``secret`` the Azure service principal, subscription and resource
    group. ``prepare`` (the command that prepares this fleet) goes into an annotation.
    ``retries`` is per shard; ``ttl_seconds`` how long the finished Job stays.

    Memory is :func:`shard_memory_mib` unless ``memory`` is given (limit: one and a half
    times the request). Raises :class:`~dpskit.errors.ConfigError` for a value Kubernetes
    would refuse or that does not fit: fewer than one shard or device, more shards than
    devices, a name that is no DNS-1123 name, an image reference with other characters."""
    _count("shards", shards, 1)
    _count("devices", devices, 1)
    if shards > devices:
        raise ConfigError(f"{shards} shards for {devices} devices: some shards would be empty")
    _count("retries", retries, 0)
    _count("ttl_seconds", ttl_seconds, 0)
    _label("name", name)
    # Pods of an Indexed Job are named <name>-<index> as their hostname: a label too.
    if len(f"{name}-{shards - 1}") > 63:
        raise ConfigError(
            f"name {name!r} is too long for {shards} shards: the pods' hostnames "
            f"{name}-<index> must fit in 63 characters"
        )
    _label("namespace", namespace)
    _subdomain("results claim", results_claim)
    _subdomain("fleet claim", fleet_claim)
    _subdomain("secret", secret)
    if not isinstance(image, str) or not _IMAGE.fullmatch(image):
        raise ConfigError(
            f"image {image!r} is not an image reference (letters, digits and . _ - / : @)"
        )
    if not isinstance(cpu, str) or not _CPU.fullmatch(cpu):
        raise ConfigError(f"cpu {cpu!r} is not a Kubernetes quantity such as 500m or 2")
    if memory is None:
        request_mib = shard_memory_mib(devices, shards)
        sizing = (
            f"{RUNTIME_MIB} MiB runtime + {DEVICE_KIB} KiB x {math.ceil(devices / shards):,} "
            f"devices per shard; limit 1.5 x request"
        )
    else:
        request_mib = math.ceil(_memory_bytes(memory) / (1 << 20))
        sizing = f"memory {memory} given; limit 1.5 x request"
    options = list(options)
    for option in options:
        if not isinstance(option, str):
            raise ConfigError(f"fleet options are strings, not {option!r}")
    values: Mapping[str, str] = {
        "name": _quoted(name),
        "namespace": _quoted(namespace),
        "prepare": _quoted(prepare),
        "sizing": _quoted(sizing),
        "shards": str(shards),
        "completions": _quoted(str(shards)),
        "retries": str(retries),
        "ttl": str(ttl_seconds),
        "image": _quoted(image),
        "options": _continued([_argument(o) for o in ["--devices", str(devices), *options]]),
        "secret": _quoted(secret),
        "cpu": _quoted(cpu),
        "memory": _quoted(f"{request_mib}Mi"),
        "memory_limit": _quoted(f"{math.ceil(request_mib * 1.5)}Mi"),
        "results_claim": _quoted(results_claim),
        "fleet_claim": _quoted(fleet_claim),
    }
    # A placeholder without a value is a broken template: KeyError, not a guess.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], fleet_job_template())


def fleet_job_template() -> str:
    """The shipped template's text, ``${name}`` placeholders and all."""
    return resources.files(__name__).joinpath(FLEET_JOB_TEMPLATE).read_text(encoding="utf-8")
