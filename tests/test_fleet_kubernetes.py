"""A fleet run as a Kubernetes Indexed Job: the manifest ``dpskit fleet kubernetes`` renders is
a valid batch/v1 Job for several Kubernetes versions (strict schemas: no unknown field), means
what the pods need (one shard per index, results on the shared claim, credentials from a
Secret, non-root) and refuses values that would break or extend it; and the set-up it relies
on, ``dpskit fleet prepare`` once then shards with ``--no-setup``, runs for real on the local
cloud and merges to the whole run."""

from __future__ import annotations

import hashlib
import re
import stat
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

import dpskit
from dpskit.cli import main
from dpskit.cli.app import _build_parser
from dpskit.deploy import fleet_job_template, render_fleet_job, shard_memory_mib
from dpskit.fleet import shard_from_environment

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

#: The oldest Kubernetes with backoffLimitPerIndex on by default (beta), and the newest this
#: kubernetes-validate bundles.
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())

IMAGE = "ghcr.io/example/dpskit:0.1.0"
SECRET_KEYS = {
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_SUBSCRIPTION_ID",
    "AZURE_RESOURCE_GROUP",
}

# -- the rendered manifest ----------------------------------------------------------------------


def _render(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, dict[str, Any]]:
    """``dpskit fleet kubernetes ARGS`` for real: its YAML text and the one document in it."""
    status = main(["fleet", "kubernetes", *args])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    documents = list(yaml.safe_load_all(captured.out))
    assert len(documents) == 1
    assert isinstance(documents[0], dict)
    return captured.out, documents[0]


def _validate(job: dict[str, Any]) -> None:
    """The Job against Kubernetes' batch/v1 schema of every version in VERSIONS, strict."""
    for version in VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)


def _expand(argument: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion of a container argument: $(VAR) of a defined variable is its
    value, $$ is $, anything else stays."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, argument)


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container["env"]}


def _check_semantics(job: dict[str, Any], shards: int, devices: int) -> None:
    """What the schema cannot see, but the pods need."""
    spec = job["spec"]
    pod = spec["template"]["spec"]
    container = _container(job)
    env = _env(container)
    assert job["apiVersion"] == "batch/v1"
    assert job["kind"] == "Job"
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == shards
    assert env["JOB_COMPLETIONS"]["value"] == str(shards)
    assert pod["restartPolicy"] == "Never"  # backoffLimitPerIndex and podFailurePolicy need it
    assert spec["backoffLimitPerIndex"] >= 0
    assert spec["ttlSecondsAfterFinished"] >= 0

    args = container["args"]
    assert container["command"] == ["dpskit"]
    assert args[0] == "fleet"
    assert args[args.index("--shard") + 1] == "auto"
    assert "--no-setup" in args
    assert "--azure" in args
    assert int(args[args.index("--devices") + 1]) == devices
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # Every mount is of a volume of the pod, and every volume is mounted.
    assert set(mounts) == set(volumes)
    results = mounts["results"]["mountPath"]
    out = args[args.index("--out") + 1]
    assert out.startswith(results + "/")
    assert "$(JOB_COMPLETION_INDEX)" in out
    assert not mounts["results"].get("readOnly", False)
    assert volumes["results"]["persistentVolumeClaim"]["claimName"]
    fleet = mounts["fleet"]
    assert args[args.index("--dir") + 1] == fleet["mountPath"]
    assert fleet["readOnly"] is True
    assert volumes["fleet"]["persistentVolumeClaim"]["readOnly"] is True

    # Credentials only from the Secret: no literal value anywhere for them.
    for name in SECRET_KEYS:
        assert set(env[name]) == {"name", "valueFrom"}
        assert set(env[name]["valueFrom"]) == {"secretKeyRef"}
        assert env[name]["valueFrom"]["secretKeyRef"]["key"] == name
    secrets = {env[name]["valueFrom"]["secretKeyRef"]["name"] for name in SECRET_KEYS}
    assert len(secrets) == 1

    # Not root, no way up, nothing kept.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
    # A read-only root needs a writable /tmp (HOME points there).
    assert env["HOME"]["value"] == mounts["tmp"]["mountPath"]
    assert "emptyDir" in volumes["tmp"]

    resources = container["resources"]
    assert resources["requests"]["memory"].endswith("Mi")
    request = int(resources["requests"]["memory"][:-2])
    assert int(resources["limits"]["memory"][:-2]) >= request


def _pods_slices(job: dict[str, Any], cloud: dpskit.LocalCloud) -> list[list[int]]:
    """Each pod's devices, as ``dpskit fleet`` in pod i would run them: its arguments expanded
    with the pod's environment, parsed by dpskit's own parser, ``--shard auto`` read by
    shard_from_environment from JOB_COMPLETION_INDEX and the manifest's JOB_COMPLETIONS."""
    container = _container(job)
    completions = _env(container)["JOB_COMPLETIONS"]["value"]
    dps = cloud.create_dps("k8s-slices")
    slices = []
    for index in range(job["spec"]["completions"]):
        env = {"JOB_COMPLETION_INDEX": str(index), "JOB_COMPLETIONS": completions}
        argv = [_expand(a, env) for a in container["args"]]
        assert argv[argv.index("--out") + 1] == f"/results/shard-{index}.parquet"
        parsed = _build_parser().parse_args(argv)
        assert parsed.shard == "auto"
        assert parsed.no_setup
        shard = shard_from_environment(env)
        assert shard == (index, job["spec"]["completions"])
        fleet = dpskit.Fleet(
            dps, count=parsed.devices, group_key="a2V5", prefix=parsed.prefix, shard=shard
        )
        slices.append(list(fleet.indexes))
    return slices


@pytest.fixture(scope="module")
def cloud() -> Iterator[dpskit.LocalCloud]:
    with dpskit.LocalCloud(port=0) as running:
        yield running


PARAMETER_SETS = [
    pytest.param(4, 100_000, [], id="defaults"),
    pytest.param(
        1,
        1,
        [
            "--name",
            "load-test",
            "--namespace",
            "iot",
            "--results-claim",
            "results.v1",
            "--fleet-claim",
            "prepared",
            "--secret",
            "azure-sp",
            "--messages",
            "5",
            "--rate",
            "0",
            "--symmetric-key",
            "--memory",
            "2Gi",
            "--cpu",
            "500m",
            "--retries",
            "0",
            "--ttl",
            "0",
        ],
        id="one-shard-symmetric-key",
    ),
    pytest.param(
        7,
        1_000,
        ["--prefix", "dev.a_b:", "--duration", "60", "--rate", "0.5", "--hubs", "4"],
        id="uneven-shards",
    ),
]


@pytest.mark.parametrize(("shards", "devices", "extra"), PARAMETER_SETS)
def test_the_rendered_job_is_valid_and_its_pods_run_every_device_once(
    shards: int,
    devices: int,
    extra: list[str],
    capsys: pytest.CaptureFixture[str],
    cloud: dpskit.LocalCloud,
) -> None:
    args = ["--shards", str(shards), "--devices", str(devices), "--image", IMAGE, *extra]
    _, job = _render(capsys, *args)
    _validate(job)
    _check_semantics(job, shards, devices)
    slices = _pods_slices(job, cloud)
    covered = [i for part in slices for i in part]
    assert sorted(covered) == list(range(devices))  # each device in exactly one pod
    assert all(part for part in slices)
    # The pods' telemetry options are the ones given, defaults spelled out.
    container_args = _container(job)["args"]
    parsed = _build_parser().parse_args(container_args)
    reference = _build_parser().parse_args(["fleet", *_fleet_run_options(extra)])
    for option in ("rate", "duration", "messages", "prefix", "seed", "symmetric_key"):
        assert getattr(parsed, option) == getattr(reference, option), option
    assert "dpskit fleet prepare --azure" in job["metadata"]["annotations"]["dpskit.io/prepare"]
    memory = _container(job)["resources"]["requests"]["memory"]
    if "--memory" not in extra:
        assert memory == f"{shard_memory_mib(devices, shards)}Mi"


def _fleet_run_options(extra: list[str]) -> list[str]:
    """The options of ``extra`` that ``dpskit fleet`` itself takes (not the Job's own)."""
    own = {"--name", "--namespace", "--results-claim", "--fleet-claim", "--secret"}
    own |= {"--memory", "--cpu", "--retries", "--ttl"}
    own.add("--hubs")  # the prepare step's, not a shard's
    kept: list[str] = []
    words = iter(extra)
    for word in words:
        if word in own:
            next(words)
        else:
            kept.append(word)
    return kept


def test_the_shipped_template_renders_with_defaults_to_a_valid_job() -> None:
    template = fleet_job_template()
    placeholders = set(re.findall(r"\$\{([a-z_]+)\}", template))
    assert {"name", "shards", "completions", "image", "secret", "options"} <= placeholders
    assert "$(JOB_COMPLETION_INDEX)" in template
    rendered = render_fleet_job(shards=1, devices=1, image="dpskit")
    assert "${" not in rendered.replace("${...}", "")
    job = yaml.safe_load(rendered)
    _validate(job)
    _check_semantics(job, 1, 1)


def test_a_broken_job_fails_the_strict_schema() -> None:
    """The validation the tests above rely on refuses an unknown field and a wrong type."""
    job = yaml.safe_load(render_fleet_job(shards=2, devices=10, image="dpskit"))
    job["spec"]["completionsMode"] = "Indexed"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, VERSIONS[-1], strict=True)
    job = yaml.safe_load(render_fleet_job(shards=2, devices=10, image="dpskit"))
    job["spec"]["completions"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, VERSIONS[-1], strict=True)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--name", "fleet\nkind: Pod", "not a DNS-1123 label"),
        ("--name", "fleet: x", "not a DNS-1123 label"),
        ("--namespace", "Default", "not a DNS-1123 label"),
        ("--secret", 'azure"\n  extra: 1', "not a DNS-1123 name"),
        ("--results-claim", "a..b", "not a DNS-1123 name"),
        ("--image", "dpskit\n  command: [sh]", "not an image reference"),
        ("--image", "dpskit latest", "not an image reference"),
        ("--prefix", "sensor-$(HOME)", "registration ids are"),
        ("--cpu", "1 core", "not a Kubernetes quantity"),
        ("--memory", "2 GB", "not a Kubernetes quantity"),
        ("--name", "f" * 62, "too long for 10 shards"),
    ],
)
def test_bad_values_are_refused_before_anything_is_printed(
    option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["fleet", "kubernetes", "--shards", "10", "--devices", "100", "--image", IMAGE]
    assert main([*args, option, value]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


def test_counts_out_of_range_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["fleet", "kubernetes", "--image", IMAGE]
    assert main([*base, "--shards", "0", "--devices", "10"]) == 2  # a usage error
    assert "must be at least 1" in capsys.readouterr().err
    assert main([*base, "--shards", "11", "--devices", "10"]) == 1
    assert "some shards would be empty" in capsys.readouterr().err
    assert main([*base, "--devices", "10"]) == 2
    assert "--shards" in capsys.readouterr().err
    with pytest.raises(dpskit.ConfigError, match="shards must be an integer of at least 1"):
        render_fleet_job(shards=0, devices=10, image="dpskit")
    with pytest.raises(dpskit.ConfigError, match="retries"):
        render_fleet_job(shards=1, devices=10, image="dpskit", retries=-1)


def test_option_values_cannot_inject_yaml_or_kubernetes_expansions() -> None:
    """What reaches the pod is exactly what was given: quotes, line breaks, YAML syntax and
    $(VAR) stay inside their argument."""
    hostile = 'x"\n  - --azure: {a: 1} # $(AZURE_CLIENT_SECRET) $$ \\'
    rendered = render_fleet_job(
        shards=2,
        devices=10,
        image="dpskit",
        options=["--prefix", hostile],
        prepare="dpskit fleet prepare\nkind: Pod",
    )
    job = yaml.safe_load(rendered)
    _validate(job)
    args = _container(job)["args"]
    env = {"AZURE_CLIENT_SECRET": "s3cret", "JOB_COMPLETION_INDEX": "0"}
    assert _expand(args[-1], env) == hostile
    assert args[-2] == "--prefix"
    assert job["metadata"]["annotations"]["dpskit.io/prepare"] == "dpskit fleet prepare\nkind: Pod"
    assert job["kind"] == "Job"


# -- prepare once, shards without set-up ------------------------------------------------------


def _digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content's digest."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_prepared_fleet_runs_as_shards_without_setup_and_merges_to_the_whole_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "fleet"
    fleet = ["--devices", "6", "--prefix", "k8s-"]
    assert main(["fleet", "prepare", *fleet, "--hubs", "2", "--dir", str(work)]) == 0
    printed = capsys.readouterr().out
    assert "6 device certificates in" in printed
    assert "--no-setup" in printed
    devices = work / "certs" / "devices"
    keys = sorted(devices.glob("*.key.pem"))
    assert [k.name for k in keys] == [f"k8s-{i:05d}.key.pem" for i in range(6)]
    if sys.platform != "win32":
        assert {stat.S_IMODE(k.stat().st_mode) for k in keys} == {0o600}
    certs_before = _digest(work / "certs")

    run = ["fleet", *fleet, "--messages", "1", "--rate", "0", "--no-progress", "--dir", str(work)]
    results = tmp_path / "results"
    results.mkdir()
    # The shards never need a CA's private key: the pods' claim goes without them.
    ca_keys = tmp_path / "ca-keys"
    ca_keys.mkdir()
    for key in (work / "certs").glob("*.key.pem"):
        key.rename(ca_keys / key.name)
    assert sorted(p.name for p in ca_keys.iterdir())  # the root's and the intermediate's
    for i in range(2):
        out = results / f"shard-{i}.parquet"
        status = main([*run, "--no-setup", "--shard", f"{i}/2", "--out", str(out)])
        captured = capsys.readouterr()
        assert status == 0, captured.err
        assert f"3 of 6 devices, shard {i}/2" in captured.err
    for key in ca_keys.iterdir():
        key.rename(work / "certs" / key.name)
    # The shards created nothing: the certificates are those prepare wrote, byte for byte.
    assert _digest(work / "certs") == certs_before

    whole = tmp_path / "whole" / "fleet.parquet"
    whole.parent.mkdir()
    assert main([*run, "--out", str(whole)]) == 0
    merged = tmp_path / "merged.parquet"
    assert main(["fleet", "merge", str(results), "--out", str(merged)]) == 0
    capsys.readouterr()
    mine = dpskit.FleetReport.load(merged).to_pandas("devices")
    theirs = dpskit.FleetReport.load(whole).to_pandas("devices")
    for column in ("registration_id", "outcome"):
        assert list(mine[column]) == list(theirs[column]), column
    assert list(mine["outcome"]) == ["completed"] * 6
    # A rerun of prepare reuses everything: the same CA and device certificates.
    assert main(["fleet", "prepare", *fleet, "--dir", str(work)]) == 0
    assert _digest(work / "certs") == certs_before


def test_shards_without_setup_refuse_what_prepare_did_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = ["fleet", "--messages", "1", "--rate", "0", "--no-progress", "--no-setup"]
    empty = tmp_path / "empty"
    assert main([*run, "--devices", "2", "--dir", str(empty)]) == 1
    err = capsys.readouterr().err
    assert "no DPS 'fleet-dps'" in err
    assert "dpskit fleet prepare" in err
    assert not (empty / "certs").exists()

    work = tmp_path / "fleet"
    assert main(["fleet", "prepare", "--devices", "4", "--dir", str(work)]) == 0
    capsys.readouterr()
    # More devices than prepared: the shard's certificates are not there to read.
    assert main([*run, "--devices", "8", "--shard", "1/2", "--dir", str(work)]) == 1
    err = capsys.readouterr().err
    assert "4 of this shard's 4 device certificates are not in" in err
    assert "sensor-00004" in err
    assert not (work / "certs" / "devices" / "sensor-00004.key.pem").exists()
    # A symmetric-key fleet was never prepared here.
    assert main([*run, "--devices", "4", "--symmetric-key", "--dir", str(work)]) == 1
    assert "no enrollment group 'fleet-keys'" in capsys.readouterr().err
    # Prepared, it runs: the group's key is read from DPS, nothing is written.
    assert main(["fleet", "prepare", "--devices", "4", "--symmetric-key", "--dir", str(work)]) == 0
    assert "fleet-keys (symmetric key)" in capsys.readouterr().out
    status = main([*run, "--devices", "4", "--symmetric-key", "--shard", "1/2", "--dir", str(work)])
    assert status == 0, capsys.readouterr().err

    # Another CA in the folder, as a second set-up racing the first would have left: the DPS
    # verified the first one, so the shard refuses rather than fail every registration.
    root = dpskit.CertificateAuthority.create_root("Another Root")
    root.create_intermediate("Another Intermediate").save(work / "certs", name="intermediate")
    assert main([*run, "--devices", "4", "--dir", str(work)]) == 1
    assert "is not the verified CA 'fleet-intermediate'" in capsys.readouterr().err
