"""The reliability harness's generated-input (schemathesis) and hostile-input parts, on the short budget against
real ``python -m service`` processes over the tiny index; and the hostile part's checker on planted answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.reliability.config import ReliabilityConfig
from benchmarks.reliability.figures import Goal, PartResult
from benchmarks.reliability.fuzz import run_fuzz
from benchmarks.reliability.hostile import Answer, all_probes, error_body_problem, judge, logged_errors, run_hostile

ERROR_BODY = b'{"error": {"code": "invalid_request", "message": "no", "request_id": "abc"}}'
JSON = "application/json"


def goal(result: PartResult, name: str) -> Goal:
    return next(g for g in result.goals if g.name.startswith(name))


def findings(result: PartResult, *words: str) -> str:
    return "\n".join(f for f in result.findings if any(w in f for w in words)) or "(none)"


@pytest.fixture(scope="module")
def config(tiny_index: Path, tiny_checkpoint: Path, synthetic_dataset: Path,
           tmp_path_factory: pytest.TempPathFactory) -> ReliabilityConfig:
    return ReliabilityConfig(index=tiny_index, build_folder=synthetic_dataset / "images", checkpoint=tiny_checkpoint,
                             work=tmp_path_factory.mktemp("reliability"), short=True)


@pytest.fixture(scope="module")
def fuzz(config: ReliabilityConfig) -> PartResult:
    return run_fuzz(config)


@pytest.fixture(scope="module")
def hostile(config: ReliabilityConfig) -> PartResult:
    return run_hostile(config)


def test_the_checker_flags_planted_bad_answers() -> None:
    assert judge("answered", Answer(500, JSON, ERROR_BODY)).fatal
    assert judge("answered", Answer(None, error="ConnectionResetError")).fatal
    for bad in (Answer(422, "text/plain", b"no"), Answer(422, JSON, b'{"detail": []}'), Answer(400, JSON, b"{"),
                Answer(413, JSON, b'{"error": {"code": "x"}}')):
        verdict = judge("answered", bad)
        assert verdict.failure is not None and not verdict.fatal, bad
    assert judge("refused", Answer(200, JSON, b'{"hits": []}'), ("hits",)).failure  # loose coercion: accepted
    assert judge("accepted", Answer(415, JSON, ERROR_BODY)).failure  # a valid image refused
    assert judge("answered", Answer(200, JSON, b'{"hits": NaN}'), ("hits",)).failure  # not JSON
    assert judge("answered", Answer(200, JSON, b'{"other": 1}'), ("hits",)).failure  # not a normal result
    assert judge("answered", Answer(422, JSON + "; charset=utf-8", ERROR_BODY)).failure is None
    assert judge("refused", Answer(413, JSON, ERROR_BODY)).failure is None
    assert judge("answered", Answer(200, JSON, b'{"hits": []}'), ("hits",)).failure is None
    assert error_body_problem(JSON, b'{"error": {"code": "c", "message": "m", "request_id": null}}') is None


def test_the_log_reader_finds_background_errors(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("2026-01-01 00:00:00,000 | ERROR | service | internal error on POST /v1/search\n"
                   "ValueError: answered as a 500, counted there\n"
                   "2026-01-01 00:00:01,000 | ERROR | service | compaction failed\nTraceback (most recent call last):\n"
                   "  File \"x.py\", line 1\nindexer.store.IndexUnavailableError: cannot read\n"
                   "2026-01-01 00:00:02,000 | WARNING | python_multipart | not an error\n")
    assert logged_errors(log) == {"service: compaction failed [indexer.store.IndexUnavailableError: cannot read]": 1}


def test_generated_input_gets_no_5xx(fuzz: PartResult) -> None:
    assert goal(fuzz, "5xx to generated input").met, findings(fuzz, "not_a_server_error", "transport_error")


def test_every_operation_gets_its_examples(fuzz: PartResult) -> None:
    operations = fuzz.figures["operations"]
    labels = " ".join(operations)
    for route in ("POST /v1/search [application/json]", "POST /v1/search [multipart/form-data]",
                  "GET /v1/items/{item_id}/image", "POST /v1/items [multipart/form-data]", "DELETE /v1/items",
                  "GET /healthz", "GET /metrics"):
        assert route in labels
    assert operations["POST /v1/search [application/json]"]["statuses"].get("200", 0) > 0  # past validation too
    short = {label: {k: op[k] for k in ("examples", "cut_short", "error", "seconds", "request_seconds",
                                        "slowest_request_s", "unsendable")}
             for label, op in operations.items() if op["examples"] < 60 and not op["stopped_early"]}
    assert goal(fuzz, "generated examples per operation").met, short


def test_responses_match_the_schema(fuzz: PartResult) -> None:
    assert goal(fuzz, "responses match the schema").met, findings(fuzz, "conformance", "error_body", "media_type")


def test_what_the_fuzz_writes_leave_behind_still_loads(fuzz: PartResult) -> None:
    assert fuzz.figures["aftermath"]["reloads"] and not fuzz.figures["aftermath"]["compaction_error"], \
        findings(fuzz, "aftermath")


def test_hostile_input_gets_no_5xx_and_no_dropped_connection(hostile: PartResult) -> None:
    assert hostile.figures["sent"] == len(all_probes())
    assert goal(hostile, "hostile inputs answered 5xx or dropped").met, findings(hostile, "hostile ")


def test_hostile_input_gets_the_expected_answer(hostile: PartResult) -> None:
    assert goal(hostile, "hostile inputs answered wrongly").met, findings(hostile, "expected")


def test_healthz_answers_while_a_big_image_decodes(hostile: PartResult) -> None:
    assert goal(hostile, "healthz stalls").met, findings(hostile, "stall")


def test_what_the_hostile_writes_leave_behind_still_loads(hostile: PartResult) -> None:
    assert hostile.figures["aftermath"]["reloads"], findings(hostile, "aftermath")
    assert (Path(hostile.figures["corpus"]) / "manifest.json").is_file()


def test_schemathesis_with_every_check_finds_nothing(fuzz: PartResult) -> None:
    runner = fuzz.figures["all_checks"]
    assert goal(fuzz, "schemathesis --checks all").met, (runner, fuzz.findings)
    assert set(runner["phases"].values()) <= {"success", "skip"} and runner["test_cases"]["generated"] > 100
