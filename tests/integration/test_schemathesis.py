"""schemathesis against the live gateway (both emulated providers behind it, SPEKE on the
internal port): every operation the OpenAPI document describes is called with generated
requests, bounded in examples and time, with a fixed seed, and each answer must not be a 5xx,
must have a described status, content type and body schema, and, when it is an error, the
gateway's JSON error shape.

The public operations run against the public port with a valid player token (header or
`?token=`), the others against the internal port with the admin token and the packager
credential, and SPEKE once more alone on a listener of its own; each listener is one run of
schemathesis's own engine (what `schemathesis run` drives), so its phases (the document's
examples, coverage of edge values, fuzzing) all run.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import requests
import schemathesis
from schemathesis import Case, CheckContext, Response, SerializationContext
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema

from proxy.server.openapi import load_document
from tests.conftest import ADMIN_TOKEN, StackFactory, player_token
from tests.keys.speke_stack import PACKAGER_TOKEN, speke_stack
from tests.server.test_openapi import WITH_REPORT

SEED = int(os.environ.get("SCHEMATHESIS_SEED", "192026"))
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "50"))  # per operation, mode, phase
# A guard against a hang, far above a run's usual time: past it the run stops where it is
# (and the check that every operation ran fails). Not a speed assert.
BUDGET_SECONDS = 300.0
ORIGIN = "https://player.example.test"  # the document's example Origin
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "json_error_shape",
)
ERROR_FIELDS = {"error", "message", "request_id"}


@schemathesis.check
def json_error_shape(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """Every 4xx/5xx answer with a body is `{"error", "message", "request_id"}` as JSON, its
    request id the X-Request-Id header's; the answers of WITH_REPORT add their report."""
    status = response.status_code
    method = case.method.upper()
    if status < 400 or method == "HEAD":
        return None
    with_report = (method, case.operation.path, str(status)) in WITH_REPORT
    content_type = response.headers.get("content-type", [""])[0].split(";", 1)[0].strip()
    if content_type != "application/json":
        raise AssertionError(f"a {status} answer is {content_type or 'untyped'}, not JSON")
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"a {status} answer's body is not JSON") from None
    if not isinstance(body, dict) or not (
        ERROR_FIELDS <= set(body) if with_report else set(body) == ERROR_FIELDS
    ):
        raise AssertionError(f"a {status} answer's body is not the error shape: {body!r}")
    if not all(isinstance(body[name], str) for name in ERROR_FIELDS):
        raise AssertionError(f"a {status} answer's error fields are not all strings: {body!r}")
    if body["request_id"] != response.headers.get("x-request-id", [None])[0]:
        raise AssertionError(f"a {status} answer's request_id is not its X-Request-Id header")
    return None


def _xml_text(ctx: SerializationContext, value: Any) -> bytes | None:
    """An XML body the document describes as a string (a CPIX document, a PlayReady
    challenge) is that string, sent as it is; schemathesis's own XML serializer would wrap it
    in an element of its own."""
    if value is None or isinstance(value, bytes):
        return value
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


schemathesis.serializer("application/xml", "text/xml")(_xml_text)


@dataclass
class RunReport:
    """What one engine run did: requests sent, per operation, and every failure."""

    requests: int = 0
    operations: set[str] = field(default_factory=set)
    answered_2xx: set[str] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stop_reason: str = ""


def run_engine(
    base_url: str,
    tags: Sequence[str],
    auth: dict[str, dict[str, str]],
    document: dict[str, Any] | None = None,
) -> RunReport:
    """One schemathesis run of the operations tagged `tags` against `base_url`: each phase
    once (no `max-time`, which would repeat fuzzing until it runs out), within the budget."""
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "cache": {"enabled": False},
            "base-url": base_url,
            "workers": 1,
            "request-timeout": 10,
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "no-shrink": True,
                "deterministic": True,
                "database": "none",
            },
            "phases": {"stateful": {"enabled": False}},
            "checks": {"enabled": False} | {name: {"enabled": True} for name in CHECKS},
        }
        | ({"auth": {"openapi": auth}} if auth else {})
    )
    loaded = schemathesis.openapi.from_dict(document or load_document(), config=config)
    schema = loaded.include(tag=list(tags))
    report = RunReport()
    started = time.monotonic()
    stream = from_schema(schema).execute()
    for event in stream:
        if time.monotonic() - started > BUDGET_SECONDS:
            stream.stop()
        if isinstance(event, events.ScenarioFinished):
            _record(report, event)
        elif isinstance(event, events.NonFatalError):
            report.errors.append(f"{event.label}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            report.errors.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            report.seconds = event.running_time
            report.stop_reason = str(event.stop_reason)
    return report


def _record(report: RunReport, event: events.ScenarioFinished) -> None:
    recorder = event.recorder
    if event.status is Status.SKIP:
        return
    report.operations.add(recorder.label)
    for interaction in recorder.interactions.values():
        report.requests += 1
        status = interaction.response.status_code if interaction.response is not None else 0
        if 200 <= status < 300:
            report.answered_2xx.add(recorder.label)
        report.statuses[status] = report.statuses.get(status, 0) + 1
    for case_id, checks in recorder.checks.items():
        for check in checks:
            if check.status is Status.FAILURE and check.failure_info is not None:
                case = recorder.cases[case_id].value
                failure = check.failure_info.failure
                report.failures.append(
                    f"{recorder.label} [{check.name}] {failure.title}: {failure.message}\n"
                    f"    {case.method} {case.formatted_path} query={case.query!r}"
                    f" headers={_shown(case.headers)} body={_body(case.body)}"
                )


def _shown(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """The case's headers, credentials masked."""
    return {
        name: "***" if name.lower() == "authorization" else value
        for name, value in (headers or {}).items()
    }


def _body(body: Any) -> str:
    text = repr(body)
    return text if len(text) <= 200 else text[:200] + "..."


async def test_schemathesis_finds_no_fault_on_either_port(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    certificate = tmp_path / "fairplay.der"
    certificate.write_bytes(b"0\x82\x01\x0aschemathesis-der-bytes")
    speke = await speke_stack(
        make_stack,
        tmp_path,
        cors={"allowed_origins": [ORIGIN]},
        fairplay={"certificate_file": str(certificate)},
    )
    gateway = speke.stack.gateway
    token = player_token()
    public = await asyncio.to_thread(
        run_engine,
        gateway.public_url,
        ["player"],
        {"playerBearer": {"bearer": token}, "playerQueryToken": {"api_key": token}},
    )
    internal = await asyncio.to_thread(
        run_engine,
        gateway.internal_url,
        ["ops", "admin", "speke"],
        {
            "adminBearer": {"bearer": ADMIN_TOKEN},
            "adminBasic": {"username": "admin", "password": ADMIN_TOKEN},
            "spekeBearer": {"bearer": PACKAGER_TOKEN},
        },
    )
    document = load_document()
    for name, run in (("public", public), ("internal", internal)):
        print(
            f"schemathesis {name}: {run.requests} requests over {len(run.operations)} operations"
            f" in {run.seconds:.1f} s ({run.stop_reason}); statuses {sorted(run.statuses.items())}"
        )
    assert public.errors == [] and internal.errors == []
    assert public.failures == [], "\n".join(public.failures)
    assert internal.failures == [], "\n".join(internal.failures)
    # Every described operation was called, and answered with success at least once.
    operations = {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in ("get", "post", "head", "options")
        if method in item
    }
    assert public.operations | internal.operations == operations
    assert public.answered_2xx | internal.answered_2xx == operations


async def test_schemathesis_finds_no_fault_on_a_speke_listener_of_its_own(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    speke = await speke_stack(make_stack, tmp_path, listener="own")
    assert speke.stack.gateway.speke_url is not None
    run = await asyncio.to_thread(
        run_engine,
        speke.stack.gateway.speke_url,
        ["speke"],
        {"spekeBearer": {"bearer": PACKAGER_TOKEN}},
    )
    print(f"schemathesis speke listener: {run.requests} requests in {run.seconds:.1f} s")
    assert run.errors == []
    assert run.failures == [], "\n".join(run.failures)
    assert run.answered_2xx == run.operations == {"POST /v2/speke"}


async def test_the_run_reports_an_answer_the_document_does_not_describe(
    make_stack: StackFactory,
) -> None:
    """The harness can fail: /healthz described as answering another status value."""
    stack = await make_stack()
    document = copy.deepcopy(load_document())
    healthz = document["paths"]["/healthz"]["get"]
    healthz["tags"] = ["canary"]
    body = healthz["responses"]["200"]["content"]["application/json"]["schema"]
    body["properties"]["status"] = {"const": "degraded"}
    report = await asyncio.to_thread(
        run_engine, stack.gateway.internal_url, ["canary"], {}, document
    )
    assert report.operations == {"GET /healthz"}
    assert any("GET /healthz [response_schema_conformance]" in f for f in report.failures)


def _answer(status: int, content_type: str, body: bytes, request_id: str) -> Response:
    return Response(
        status_code=status,
        headers={"content-type": [content_type], "x-request-id": [request_id]},
        content=body,
        request=requests.Request("GET", "http://127.0.0.1/").prepare(),
        elapsed=0.0,
        verify=True,
    )


def test_the_error_shape_check_refuses_any_other_error_body() -> None:
    schema = schemathesis.openapi.from_dict(load_document())
    case = schema["/v1/certificate/fairplay"]["GET"].Case()
    ctx = cast(CheckContext, None)  # the check reads only the answer and the case
    rid = "request-1234"
    good = json.dumps({"error": "not_found", "message": "Not found.", "request_id": rid})
    assert json_error_shape(ctx, _answer(404, "application/json", good.encode(), rid), case) is None
    assert json_error_shape(ctx, _answer(200, "text/plain", b"abc", rid), case) is None
    refused = [
        _answer(404, "text/plain", b"404: Not Found", rid),
        _answer(404, "application/json", b"{not json", rid),
        _answer(500, "application/json", b'{"error": "x", "message": "y"}', rid),
        _answer(404, "application/json", good.encode(), "another-request"),
        _answer(
            502, "application/json", json.dumps({**json.loads(good), "detail": "z"}).encode(), rid
        ),
    ]
    for answer in refused:
        with pytest.raises(AssertionError):
            json_error_shape(ctx, answer, case)
