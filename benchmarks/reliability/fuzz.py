"""The generated-input part of the reliability harness: schemathesis over every operation of the service's own
OpenAPI (each request body media type apart), against a real ``python -m service`` on a copy of the index.

Each response is checked: no 5xx (nor a dropped connection), its status code documented, its media type and body
as documented, and every 4xx/5xx the service's JSON error body. Each operation gets the budget's examples, within a
cap on the server's answering time; every distinct failure is kept with what reproduces it, and a case the HTTP
client cannot send is noted and passed over rather than ending its operation.

Then schemathesis's own runner, as a user runs it (``st run URL/openapi.json --checks all``): every phase (coverage,
fuzzing, stateful) and every check, valid input accepted and invalid refused among them, with the API's hooks
(benchmarks/reliability/schemathesis_hooks.py: real images, and the mutations the service cannot see on the wire).
Its stateful phase follows the links the OpenAPI declares (a written item's id to its reads, replacement and
delete) rather than guessed ones: a text item has no image route to reach.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from schemathesis import checks as builtin
from schemathesis.checks import FailureGroup
from schemathesis.config import SchemathesisConfig

from benchmarks.reliability.config import ReliabilityConfig
from benchmarks.reliability.copies import collection_root_args, copy_index
from benchmarks.reliability.figures import Goal, PartResult
from benchmarks.reliability.hostile import (
    ServerLog,
    aftermath,
    compaction_error,
    error_body_problem,
    reload_problem,
    serving_ready,
)
from benchmarks.service_process import ROOT, Server

KEY = "reliability-fuzz-key"
REQUEST_TIMEOUT_S = 10.0  # a generated request unanswered this long is a failure itself
SECONDS_PER_EXAMPLE = 0.5  # an operation's cap on the server's answering time: its budget at this pace, at least
MIN_CAP_S = 30.0  # MIN_CAP_S; generating and checking cases is the harness's own time, not the server's
HARNESS_SLACK = 4.0  # ...but the whole operation stops at this many caps of wall clock, whatever took the time
EXCERPT = 240
KNOWN_IDS = 2  # real item ids per side mixed into the path parameters, so item routes reach their 2xx paths
SCHEMA_CHECKS: dict[str, Callable[..., Any]] = {
    "status_code_conformance": builtin.status_code_conformance,
    "content_type_conformance": builtin.content_type_conformance,
    "response_schema_conformance": builtin.response_schema_conformance,
}
OWN_CHECKS = ("error_body", "undocumented_media_type")
SERVER_ERROR = "not_a_server_error"
TRANSPORT = "transport_error"
MAX_UNANSWERED = 2  # an operation whose requests go unanswered this often is hung: more examples add nothing
HOOKS = "benchmarks.reliability.schemathesis_hooks"
# the stateful phase follows the links the OpenAPI declares, not links it guesses (see the docstring)
RUNNER_CONFIG = "[phases.stateful.inference]\nalgorithms = []\n"
RUNNER_EXAMPLES_SHARE = 5  # the runner's examples per operation: the budget's over this (its phases multiply them)


class _Stop(Exception):
    """Raised inside the hypothesis test once an operation's cap has passed (or it stopped answering): it ends
    that operation's run."""


@dataclass(frozen=True)
class Unit:
    """One operation (one request media type of it) and the strategy generating its requests."""

    label: str
    operation: Any
    strategy: SearchStrategy[Any]


@dataclass
class Tally:
    label: str
    examples: int = 0
    modes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    request_seconds: float = 0.0  # of ``seconds``, waiting for answers (the rest: generating and checking)
    slowest_request_s: float = 0.0
    unsendable: int = 0  # cases the HTTP client itself refused to send (e.g. a header it cannot encode)
    cut_short: bool = False
    stopped_early: bool = False  # hypothesis ran out of distinct (or valid) inputs before the budget
    error: str | None = None

    def figures(self) -> dict[str, Any]:
        return {"examples": self.examples, "modes": dict(self.modes), "statuses": dict(self.statuses),
                "failures": dict(self.failures), "seconds": round(self.seconds, 2),
                "request_seconds": round(self.request_seconds, 2),
                "slowest_request_s": round(self.slowest_request_s, 2), "unsendable": self.unsendable,
                "cut_short": self.cut_short,
                "stopped_early": self.stopped_early, "error": self.error}


@dataclass
class Finding:
    text: str
    count: int = 1


@dataclass
class Context:
    server: Server
    raw: dict[str, Any]
    session: requests.Session
    log: ServerLog
    budget: int
    cap_s: float
    seed: int
    findings: dict[tuple[str, ...], Finding] = field(default_factory=dict)


# -- the schema and the operations ---------------------------------------------------------------------------------


def one_media_type(raw: dict[str, Any], media_type: str) -> dict[str, Any]:
    """The schema with each request body that offers ``media_type`` offering only it (schemathesis otherwise
    picks a media type per example, whatever the strategy is asked for)."""
    raw = copy.deepcopy(raw)
    for operation in _operations(raw):
        content = operation.get("requestBody", {}).get("content", {})
        if media_type in content:
            operation["requestBody"]["content"] = {media_type: content[media_type]}
    return raw


def focused(raw: dict[str, Any]) -> dict[str, Any]:
    """The schema with every body that takes a ``text`` requiring a real one (and no image): most generated
    bodies otherwise miss the 'exactly one of text or image' rule and never get past validation."""
    raw = copy.deepcopy(raw)
    for operation in _operations(raw):
        for content in operation.get("requestBody", {}).get("content", {}).values():
            properties = content.get("schema", {}).get("properties", {})
            if "text" in properties:
                properties["text"] = {"type": "string", "minLength": 1, "maxLength": 1000}
                for image_field in ("image", "image_base64", "captions"):
                    properties.pop(image_field, None)
                content["schema"]["required"] = ["text"]
    return raw


def _operations(raw: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for methods in raw.get("paths", {}).values():
        yield from (op for method, op in methods.items() if method in ("get", "put", "post", "delete", "patch"))


def _schema(raw: dict[str, Any], base: str) -> Any:
    schema = schemathesis.openapi.from_dict(raw, config=SchemathesisConfig())  # no config file looked for
    schema.config.update(base_url=base)
    return schema


def _order(label: str) -> tuple[int, str]:
    """Reads first, then writes, compaction, deletes last (they remove items the others use)."""
    method, path = label.split()[:2]
    rank = {"GET": 0, "POST": 1, "PUT": 2, "DELETE": 4}.get(method, 3)
    if method == "POST" and path == "/v1/search":
        rank = 0
    if path == "/v1/compact":
        rank = 3
    return rank, label


def known_ids(server: Server) -> list[str]:
    """A few live ids of each side, from a plain search."""
    ids = []
    for side in ("images", "texts"):
        reply = server.post_json("/v1/search", {"text": "a", "side": side, "top_k": KNOWN_IDS})
        if reply.status == 200:
            ids += [hit["id"] for hit in reply.json()["hits"]]
    return ids


def _strategies(operations: list[Any], ids: list[str]) -> SearchStrategy[Any]:
    """Positive and negative cases of the schema's operation, positive ones of its focused twin, and positive
    ones on known item ids; the write key in every case's headers."""
    headers = {"Authorization": f"Bearer {KEY}"}
    strategies = []
    for n, operation in enumerate(operations):
        modes = list(schemathesis.GenerationMode) if n == 0 else [schemathesis.GenerationMode.POSITIVE]
        strategies += [operation.as_strategy(generation_mode=mode, headers=headers) for mode in modes]
    if "item_id" in {p.name for p in operations[0].path_parameters}:
        strategies += [operations[0].as_strategy(headers=headers, path_parameters={"item_id": i}) for i in ids]
    return st.one_of(strategies)


def units(raw: dict[str, Any], base: str, ids: list[str]) -> list[Unit]:
    """Every operation, once per request media type."""
    found = []
    for media_type in ("application/json", "multipart/form-data"):
        schemas = [_schema(one_media_type(r, media_type), base) for r in (raw, focused(raw))]
        twins = {op.label: op for op in (r.ok() for r in schemas[1].get_all_operations())}
        for result in schemas[0].get_all_operations():
            operation = result.ok()
            media_types = [b.media_type for b in operation.body]
            if media_type in media_types or (not media_types and media_type == "application/json"):
                label = operation.label + (f" [{media_type}]" if media_types else "")
                found.append(Unit(label, operation, _strategies([operation, twins[operation.label]], ids)))
    return sorted(found, key=lambda unit: _order(unit.label))


# -- the checks ----------------------------------------------------------------------------------------------------


def _declared_content(raw: dict[str, Any], case: Any, status: int) -> dict[str, Any] | None:
    """The content the schema declares for this status (None: the status is not documented at all)."""
    responses = raw["paths"][case.operation.path][case.method.lower()].get("responses", {})
    response = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX") or responses.get("default")
    return None if response is None else response.get("content", {})


def own_problems(raw: dict[str, Any], case: Any, response: Any) -> Iterator[tuple[str, str, str]]:
    """(check, title, detail) of the checks schemathesis has not: the error body, and a body the schema never
    declares a media type for."""
    content_type = response.headers.get("content-type", [""])[0] if response.headers else ""
    if response.status_code >= 400:
        problem = error_body_problem(content_type, response.content or b"")
        if problem is not None:
            yield "error_body", "not the documented JSON error body", problem
    declared = _declared_content(raw, case, response.status_code)
    if declared == {} and response.content:
        yield ("undocumented_media_type", "a body the schema declares no media type for",
               f"{content_type or 'untyped'} body, schema declares none for {response.status_code}")


def schemathesis_problems(case: Any, response: Any) -> Iterator[tuple[str, str, str]]:
    for name, check in SCHEMA_CHECKS.items():
        try:
            case.validate_response(response, checks=[check])
        except FailureGroup as group:
            for failure in group.exceptions:
                yield name, failure.title, (failure.message or "").strip().splitlines()[0][:EXCERPT]
        except Exception as e:  # a check that cannot run says so, rather than ending the operation
            yield name, "check could not run", f"{type(e).__name__}: {e}"[:EXCERPT]


# -- the run -------------------------------------------------------------------------------------------------------


def _body_excerpt(case: Any) -> str:
    body = case.body
    if type(body).__name__ == "NotSet":
        return ""
    return f" body={repr(body)[:EXCERPT]}"


def _note(ctx: Context, unit: Unit, key: tuple[str, ...], detail: str, case: Any, outcome: str) -> None:
    if key in ctx.findings:
        ctx.findings[key].count += 1
        return
    check, title = key[1], key[2]
    ctx.findings[key] = Finding(f"fuzz {unit.label} — {check}: {title} ({detail}); e.g. {case.method} "
                                f"{case.formatted_path}{_body_excerpt(case)} -> {outcome}")


def _outcome(response: Any) -> str:
    return f"{response.status_code} {(response.content or b'')[:EXCERPT].decode('utf-8', 'replace')}"


def exercise(ctx: Context, unit: Unit, tally: Tally, case: Any) -> None:
    """Send one generated case and run every check on its response."""
    tally.modes[case.meta.generation.mode.value if case.meta else "positive"] += 1
    offset = ctx.log.offset()
    sent = time.monotonic()
    try:
        response = case.call(base_url=ctx.server.base, session=ctx.session, timeout=REQUEST_TIMEOUT_S)
    except requests.RequestException as e:
        tally.failures[TRANSPORT] += 1
        _note(ctx, unit, (unit.label, TRANSPORT, type(e).__name__), str(e)[:EXCERPT], case, "no answer")
        return
    except Exception as e:  # the client's own refusal (nothing reached the server): noted, and the run goes on
        tally.unsendable += 1
        _note(ctx, unit, (unit.label, "unsendable", type(e).__name__), str(e)[:EXCERPT], case, "not sent")
        return
    finally:
        waited = time.monotonic() - sent
        tally.request_seconds += waited
        tally.slowest_request_s = max(tally.slowest_request_s, waited)
    status = response.status_code
    tally.statuses[str(status)] += 1
    problems = list(schemathesis_problems(case, response)) + list(own_problems(ctx.raw, case, response))
    if status >= 500:
        problems.insert(0, (SERVER_ERROR, f"{status} server error", ctx.log.exception_since(offset) or "no trace"))
    for check, title, detail in problems:
        tally.failures[check] += 1
        # one finding per operation, check, title and status (a 5xx: per exception too)
        key = (unit.label, check, title, str(status), detail if check == SERVER_ERROR else "")
        _note(ctx, unit, key, detail, case, _outcome(response))


def fuzz_unit(ctx: Context, unit: Unit) -> Tally:
    """Up to the budget's examples of one operation, within its cap (of the server's answering time; a slow
    harness process, e.g. late in a long test run, does not cut the server's examples short unless it is extreme)."""
    tally = Tally(unit.label)
    started = time.monotonic()
    deadline = started + HARNESS_SLACK * ctx.cap_s

    def one(case: Any) -> None:
        if tally.request_seconds > ctx.cap_s or time.monotonic() > deadline \
                or tally.failures[TRANSPORT] >= MAX_UNANSWERED:
            tally.cut_short = True
            raise _Stop
        tally.examples += 1
        exercise(ctx, unit, tally, case)

    test = seed(ctx.seed)(settings(
        max_examples=ctx.budget, deadline=None, database=None, phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet, report_multiple_bugs=False,
    )(given(unit.strategy)(one)))
    try:
        test()
    except _Stop:
        pass
    except Unsatisfiable:
        tally.stopped_early = True
    except Exception as e:  # generation itself failed: reported, and the other operations still run
        tally.error = f"{type(e).__name__}: {e}"[:EXCERPT]
    tally.seconds = time.monotonic() - started
    tally.stopped_early = tally.stopped_early or (tally.examples < ctx.budget and not tally.cut_short
                                                  and tally.error is None)
    return tally


def _goals(tallies: list[Tally], budget: int) -> list[Goal]:
    server_errors = sum(t.failures[SERVER_ERROR] + t.failures[TRANSPORT] for t in tallies)
    mismatches = sum(t.failures[c] for t in tallies for c in (*SCHEMA_CHECKS, *OWN_CHECKS))
    reachable = [t.examples for t in tallies if not t.stopped_early]
    fewest = min(reachable, default=budget)
    short = [t for t in tallies if t.examples < budget and not t.stopped_early]
    return [
        Goal(name="5xx to generated input", target="0", value=server_errors, met=server_errors == 0),
        Goal(name="generated examples per operation", target=f">= {budget}", value=fewest, met=not short),
        Goal(name="responses match the schema", target="0 failures", value=mismatches, met=mismatches == 0),
    ]


def _figures(tallies: list[Tally], ctx: Context, ids: list[str]) -> dict[str, Any]:
    checks: Counter[str] = Counter()
    for tally in tallies:
        checks.update(tally.failures)
    return {
        "operations": {t.label: t.figures() for t in tallies},
        "examples": sum(t.examples for t in tallies), "failures_per_check": dict(checks),
        "server_errors": checks[SERVER_ERROR], "transport_errors": checks[TRANSPORT],
        "undocumented_status_codes": checks["status_code_conformance"],
        "stopped_early": [t.label for t in tallies if t.stopped_early],
        "cut_short": [t.label for t in tallies if t.cut_short],
        "cap_s_per_operation": ctx.cap_s, "wall_clock_stop_s": HARNESS_SLACK * ctx.cap_s,
        "known_ids": ids, "seed": ctx.seed,
    }


def _findings(ctx: Context) -> list[str]:
    ordered = sorted(ctx.findings.items(), key=lambda kv: (kv[0][1] != SERVER_ERROR, kv[0][1] != TRANSPORT, kv[0]))
    return [f"{finding.text}; seen {finding.count}x" for _, finding in ordered]


def all_checks(server: Server, folder: Path, budget: int, seed: int) -> dict[str, Any]:
    """``st run --checks all`` against the server; its JSON run report's counts and failures."""
    (folder / "schemathesis.toml").write_text(RUNNER_CONFIG)
    report = folder / "schemathesis-run.json"
    report.unlink(missing_ok=True)
    command = [str(Path(sys.executable).with_name("st")), "--config-file", str(folder / "schemathesis.toml"), "run",
               f"{server.base}/openapi.json", "--checks", "all", "-H", f"Authorization: Bearer {KEY}",
               "--max-examples", str(max(10, budget // RUNNER_EXAMPLES_SHARE)), "--workers", "1",
               "--continue-on-failure", "--seed", str(seed), "--report", "json", "--report-json-path", str(report)]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    with (folder / "schemathesis-run.log").open("w") as log:
        code = subprocess.run(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if not report.is_file():
        return {"exit_code": code, "error": f"no report; see {folder / 'schemathesis-run.log'}",
                "seconds": round(time.monotonic() - started, 1)}
    run = json.loads(report.read_text())
    return {"exit_code": code, "test_cases": run["test_cases"], "phases": {k: v["status"] for k, v in
            run["phases"].items()}, "failures": [_runner_failure(f) for f in run["failures"]],
            "errors": [str(e)[:EXCERPT] for e in run["errors"]], "filtered_by_hooks": run.get("filtered"),
            "seconds": round(time.monotonic() - started, 1)}


def _runner_failure(failure: Any) -> str:
    return json.dumps(failure)[:EXCERPT * 2]


def _runner_goal(runner: dict[str, Any]) -> Goal:
    failures = len(runner.get("failures", [])) + len(runner.get("errors", []))
    broken = "error" in runner
    return Goal(name="schemathesis --checks all (every phase)", target="0 failures of any kind",
                value=runner["error"] if broken else f"{failures} failures in {runner['test_cases']['generated']} "
                "generated cases", met=not broken and failures == 0 and runner["exit_code"] == 0)


def run_fuzz(config: ReliabilityConfig) -> PartResult:
    started = time.monotonic()
    folder = config.work / "fuzz"
    folder.mkdir(parents=True, exist_ok=True)
    budget = config.budget.examples_per_operation
    index = copy_index(config.index, folder / "index")  # the write routes change it
    for log in ("server.log", "reload.log"):
        (folder / log).unlink(missing_ok=True)  # appended to by each server: this run's alone
    args = collection_root_args(config.index)
    with serving_ready(index, folder / "server.log", ("--api-key", KEY, *args)) as server, \
            requests.Session() as session:
        raw = server.request("GET", "/openapi.json").json()
        ids = known_ids(server)
        ctx = Context(server, raw, session, ServerLog(server.log_path), budget,
                      max(MIN_CAP_S, budget * SECONDS_PER_EXAMPLE), config.seed)
        tallies = [fuzz_unit(ctx, unit) for unit in units(raw, server.base, ids)]
        runner = all_checks(server, folder, budget, config.seed)
        compaction = compaction_error(server, KEY)
    left, left_findings = aftermath("fuzz", compaction, folder / "server.log",
                                    reload_problem(index, folder / "reload.log", args))
    return PartResult(part="fuzz", goals=[*_goals(tallies, budget), _runner_goal(runner)],
                      figures={**_figures(tallies, ctx, ids), "all_checks": runner, "aftermath": left},
                      findings=_findings(ctx) + left_findings + [f"schemathesis --checks all: {f}"
                                                                  for f in runner.get("failures", [])],
                      seconds=round(time.monotonic() - started, 2))
