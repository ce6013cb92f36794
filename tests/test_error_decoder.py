"""The error decoder: every form an SDK reports a DPS, IoT Hub, CONNACK or TLS error in is read
by ``dpskit.explain_error`` and ``dpskit doctor error`` into the same catalogue entry, with its
likely causes most likely first; text it does not know gets general advice, never an error."""

from __future__ import annotations

import json

import pytest

import dpskit
from dpskit.cli import main
from dpskit.doctor import CAUSES

# (text, code, status, service, the first cause name)
RECOGNISED = [
    ("401002", 401002, 401, "dps", "missing-intermediate"),
    (401002, 401002, 401, "dps", "missing-intermediate"),
    (
        '{"errorCode":401002,"trackingId":"abc","message":"Unauthorized"}',
        401002,
        401,
        "dps",
        "missing-intermediate",
    ),
    ("401", None, 401, "dps", "missing-intermediate"),
    (
        '{"errorCode":401002,"message":"CA certificate not found."}',
        401002,
        401,
        "dps",
        "missing-intermediate",
    ),
    (
        "Signing certificate info did not match chain elements",
        401002,
        401,
        "dps",
        "wrong-ca-in-group",
    ),
    ("Invalid certificate", 401002, 401, "dps", "missing-intermediate"),
    ("400208", 400208, 400, "dps", "no-linked-hub"),
    ("PROV_DEVICE_RESULT_HUB_NOT_SPECIFIED", 400208, 400, "sdk", "no-linked-hub"),
    ("404201", 404201, 404, "dps", "wrong-ca-in-group"),
    ("CONNACK 5", None, 5, "mqtt", "hub-identity-mismatch"),
    ("Paho returned rc==5", None, 5, "mqtt", "hub-identity-mismatch"),
    ("Connection refused: not authorized", None, 5, "mqtt", "hub-identity-mismatch"),
    ("Not authorized", None, 5, "mqtt", "hub-identity-mismatch"),
    ("Credentials invalid, could not connect", None, 5, "mqtt", "hub-identity-mismatch"),
    ("CONNACK 4", None, 4, "mqtt", "cn-mismatch"),
    (
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer "
        "certificate (_ssl.c:1006)",
        None,
        None,
        "tls",
        "stale-trust-bundle",
    ),
    ("unable to get local issuer certificate", None, None, "tls", "stale-trust-bundle"),
    ("invalid peer certificate: UnknownIssuer", None, None, "tls", "stale-trust-bundle"),
    ("x509: certificate signed by unknown authority", None, None, "tls", "stale-trust-bundle"),
    (
        "The remote certificate is invalid according to the validation procedure",
        None,
        None,
        "tls",
        "stale-trust-bundle",
    ),
    ("sslv3 alert certificate expired", None, None, "tls", "expired-leaf"),
    ("sslv3 alert handshake failure", None, None, "tls", "unsupported-algorithm"),
    ("tlsv1 alert bad certificate", None, None, "tls", "unfit-leaf"),
    ("ClientError: Unexpected failure", None, None, "sdk", "missing-intermediate"),
    ("PROV_DEVICE_RESULT_UNAUTHORIZED", None, None, "sdk", "missing-intermediate"),
    ("ConnectionDroppedError('Paho returned rc==1')", None, None, "sdk", "missing-intermediate"),
]


@pytest.mark.parametrize(("text", "code", "status", "service", "first"), RECOGNISED)
def test_every_form_is_read(
    text: str | int, code: int | None, status: int | None, service: str, first: str
) -> None:
    e = dpskit.explain_error(text)
    assert e.known, (text, e.title)
    assert (e.code, e.status, e.service) == (code, status, service)
    assert e.cause_names[0] == first
    assert e.matched
    assert e.title
    assert e.meaning
    assert e.causes
    # Every cause name is one the doctor reports.
    assert set(e.cause_names) <= set(CAUSES)


def test_401002_lists_the_classic_causes_most_likely_first() -> None:
    e = dpskit.explain_error("401002")
    assert e.cause_names[:3] == ["missing-intermediate", "unverified-ca", "wrong-ca-in-group"]
    for cause in (
        "cn-mismatch",
        "expired-leaf",
        "expired-intermediate",
        "disabled-enrollment",
        "chain-order",
        "pkcs12-without-chain",
        "individual-enrollment-mismatch",
    ):
        assert cause in e.cause_names
    assert len(e.causes) >= len(e.cause_names)


def test_the_status_in_a_wrapped_python_error_wins_over_the_wrapper() -> None:
    e = dpskit.explain_error(
        "ClientError: Unexpected failure (caused by ServiceError: register request returned a "
        "service error status code 401)"
    )
    assert (e.status, e.title) == (401, "Unauthorized")


@pytest.mark.parametrize(
    "code",
    [
        400004,
        401003,
        403002,
        403004,
        404001,
        404103,
        409001,
        409002,
        412002,
        429001,
        429002,
        429003,
        500001,
        503003,
        400209,
    ],
)
def test_iot_hub_and_dps_codes_are_known(code: int) -> None:
    e = dpskit.explain_error(code)
    assert e.known
    assert e.code == code
    assert e.status == code // 1000


def test_an_explanation_prints_its_title_and_causes() -> None:
    text = repr(dpskit.explain_error("400208"))
    assert text == (
        '<ErrorExplanation "No IoT hub to assign" known=True code=400208 status=400 '
        "causes=['no-linked-hub']>"
    )


def test_an_unknown_sub_code_is_read_as_its_family() -> None:
    e = dpskit.explain_error('{"errorCode": 401999}')
    assert (e.known, e.code, e.status, e.title) == (True, 401999, 401, "Unauthorized")


@pytest.mark.parametrize("text", ["", "the printer is on fire", "port 8883", "v2.14.0"])
def test_unknown_text_gets_general_advice(text: str) -> None:
    e = dpskit.explain_error(text)
    assert not e.known
    assert e.matched is None
    assert e.code is None
    assert e.service is None
    assert e.cause_names == []
    assert any("dpskit doctor device" in c for c in e.causes)


def test_the_cli_prints_the_explanation(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["doctor", "error", '{"errorCode":401002,"message":"CA certificate not found."}']) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("CA certificate not found (code 401002, status 401, dps)")
    assert "1. The device sends only its leaf certificate" in out
    assert "doctor causes: missing-intermediate, unverified-ca" in out


def test_the_cli_joins_unquoted_words_and_says_connack(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "error", "Connection", "refused:", "not", "authorized"]) == 0
    assert capsys.readouterr().out.startswith("CONNACK 5: not authorized (CONNACK 5, mqtt)")


def test_the_cli_json_and_its_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "error", "400208", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["code"] == 400208
    assert data["cause_names"] == ["no-linked-hub"]
    assert data["known"] is True
    assert main(["doctor", "error", "gibberish", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["known"] is False
    assert data["matched"] is None
