"""``docs/reliability/README.md`` from a reliability report: every goal with its number, then each part's figures
and findings."""

from __future__ import annotations

import json
from typing import Any

MAX_LISTED = 8  # longer lists and larger tables stay in report.json
DEFECTS_FIXED = """\
## Defects found by hostile use, and where each fix is held

| defect | fix | regression test |
| --- | --- | --- |
| 16 parallel 40 MP uploads held 2.4 GB: images decoded before they waited, nothing bounded the waiting | \
admission (`max_pending`) before the body is read; decoding on two off-loop threads; query images brought down to \
1,024 px (JPEG decoded at that size) | `tests/test_service_hardening.py` (shedding, decode thread, reduction) |
| overload: unbounded queue, nothing refused, abandoned requests still computed | 503 + Retry-After past the \
bound; admitted work dropped when its deadline (`queue_timeout_s`) passed or its client hung up | \
`test_past_the_admission_bound_…`, `test_admitted_work_past_its_deadline_…`, \
`test_the_work_of_a_client_that_hung_up_…` |
| event loop stalled by decoding and by a 28 MB response | decode and serialisation off the loop; explanations \
for the first 50 hits only | `test_query_images_are_decoded_off_the_event_loop`, \
`tests/test_search.py::test_only_the_first_hits_of_a_page_are_explained` |
| 500 for a lone surrogate, a 5,000-digit number, NaN | strict JSON reading: 400 | \
`test_input_that_once_gave_500_is_a_400` |
| a 500 had no request id, was not counted, closed keep-alive without notice | the outermost middleware answers \
it as the JSON error body | `test_an_unexpected_error_is_a_json_500_…` |
| /metrics grew a series per made-up HTTP method | unknown methods are `other` | \
`test_made_up_http_methods_share_one_metrics_series` |
| no header or body read timeout | header timeout in the HTTP protocol (`header_timeout_s`), 408 for a stalled \
body (`body_timeout_s`) | `test_a_connection_trickling_its_headers_is_closed`, `test_a_stalled_body_gets_408` |
| OpenAPI without error responses; image route declared JSON | every route declares its errors with the error \
body; the image route its image types | `test_the_openapi_declares_every_error_with_the_error_body` |
| /v1/indexes showed server paths; Host reflected in a redirect | no paths; no slash redirects | \
`test_meta_endpoints`, `test_a_trailing_slash_is_a_404_…` |
| `top_k: true` read as 1, `explain: "yes"` accepted; invalid UTF-8 in a multipart field read as latin-1 | strict \
validation (multipart fields typed first); 400 for invalid UTF-8 | `test_json_fields_are_not_coerced`, \
`test_multipart_fields_are_typed_strictly`, `test_invalid_utf8_in_a_multipart_text_field_is_refused` |
| SIGTERM/SIGINT under traffic deadlocked the process (the JVM's handler halted the VM under a thread holding the \
GIL); idle, it exited 143 without its shutdown code | the JVM started with `-Xrs`; a drain (503 + Retry-After for new \
requests, in-flight ones answered, a compaction finished or rolled back within `drain_timeout_s`), exit 0 | \
`tests/test_service_shutdown.py` |
| 16 sockets trickling a body held every admission slot: every search 503 for a minute | bodies read whole before \
admission, under a byte budget, a whole-body deadline and a minimum rate | `tests/test_service_operations.py` \
(trickling, deadline, budget, admission), part slow |
| a percent-encoded newline or escape in a path forged a log line | the access log writes the path as sent; every \
log message is one line | `test_a_path_cannot_forge_a_log_line` |
| the HTTP parser's refusals were plain text; a 1 MB header reset the connection | the JSON error body (400, 431), \
then the rest read and dropped before the close | `test_protocol_errors_get_the_json_error_body` |
| 405 without Allow; PUT on an image was a 422 | Allow names every method of the path; the write routes do not \
take an id ending in /image | `test_a_405_names_the_allowed_methods` |
| the OpenAPI accepted more than the service (metadata, images, text and image, extra fields) | the schema states \
what the service accepts; schemathesis `--checks all` in the fuzz part | \
`test_schemathesis_with_every_check_finds_nothing` |
| a 413 from the headers had no request id; a 9 MB JSON body stalled the loop; 40 MP uploads stayed resident; no \
security headers | the id from the outermost layer; large bodies parsed off the loop; glibc's mmap threshold fixed; \
nosniff everywhere, CSP and X-Frame-Options on the page | `test_oversized_bodies_get_413`, \
`test_a_large_json_body_is_parsed_off_the_event_loop`, `test_big_uploads_leave_little_resident`, \
`test_answers_carry_the_security_headers` |
"""


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _flat(figures: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for name, value in figures.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and len(value) <= 3 * MAX_LISTED:
            rows.extend(_flat(value, f"{key}."))
        elif isinstance(value, dict | list) and len(value) > MAX_LISTED:
            rows.append((key, f"({len(value)} entries: report.json)"))
        else:
            rows.append((key, value))
    return rows


def _goal_rows(part: str, result: dict[str, Any]) -> list[str]:
    return [f"| {part} | {_cell(g['name'])} | {_cell(g['target'])} | {_cell(g['value'])} | "
            f"{'met' if g['met'] else '**missed**'} |" for g in result["goals"]]


def _operations_table(operations: dict[str, dict[str, Any]]) -> list[str]:
    """Generated input per API operation: one row each."""
    lines = ["| operation | examples | statuses | failures | seconds | stopped |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, op in operations.items():
        stopped = "inputs exhausted" if op.get("stopped_early") else "time cap" if op.get("cut_short") else ""
        lines.append(f"| {_cell(name)} | {op.get('examples')} | {_cell(op.get('statuses', {}))} | "
                     f"{_cell(op.get('failures', {}) or 0)} | {op.get('seconds')} | {stopped} |")
    return [*lines, ""]


def _part_section(part: str, result: dict[str, Any]) -> list[str]:
    lines = [f"### {part} ({result['seconds']:.0f} s)", ""]
    figures = dict(result.get("figures", {}))
    operations = figures.pop("operations", None)
    if isinstance(operations, dict) and all(isinstance(v, dict) and "examples" in v for v in operations.values()):
        lines += _operations_table(operations)
    elif operations is not None:
        figures["operations"] = operations
    rows = _flat(figures)
    if rows:
        lines += ["| figure | value |", "| --- | --- |", *(f"| {_cell(k)} | {_cell(v)} |" for k, v in rows), ""]
    findings = result.get("findings", [])
    lines += [f"Findings: {len(findings)}.", ""]
    for finding in findings[:20]:
        lines += ["```", finding.strip()[:2000], "```", ""]
    if len(findings) > 20:
        lines += [f"({len(findings) - 20} more in report.json)", ""]
    return lines


def _resumed(report: dict[str, Any]) -> str:
    """Which parts an earlier invocation measured (a resumed run's time is its own invocation's only)."""
    earlier = {name: log for name, log in report.get("sections", {}).items() if log.get("resumed")}
    if not earlier:
        return ""
    measured = sum(log.get("seconds") or 0 for log in earlier.values()) / 60
    return (f" for the parts this invocation measured; {', '.join(earlier)} were measured by an earlier one "
            f"({measured:.1f} min, at {min(str(log.get('measured_at')) for log in earlier.values())} and after)")


def render_reliability(report: dict[str, Any]) -> str:
    machine, budget = report["machine"], report["budget"]
    lines = ["# Reliability: load, faults, bad input and access, measured", "",
             f"`{report.get('command', 'python -m benchmarks reliability')}` on {machine.get('platform')} "
             f"({machine.get('cpus')} CPUs, Python {machine.get('python')}, torch {machine.get('torch')}), "
             f"{'the short run' if report['config'].get('short') else 'the full run'}, "
             f"{report['seconds'] / 60:.1f} min{_resumed(report)}. Checkpoint `{report['checkpoint']['path']}` "
             f"({report['checkpoint']['content_hash'][:12]}), index `{report['config']['index']}`. "
             "Every server is a real `python -m service` on 127.0.0.1.", "",
             f"**{report['goals_met']} of {report['goals']} goals met.**", "",
             "Budget: " + ", ".join(f"{k} {v}" for k, v in budget.items()) + ".", "",
             "| part | goal | target | measured | |", "| --- | --- | --- | --- | --- |"]
    for part, result in report["parts"].items():
        lines += _goal_rows(part, result)
    lines += ["", "## Figures and findings by part", ""]
    for part, result in report["parts"].items():
        lines += _part_section(part, result)
    lines += [DEFECTS_FIXED]
    return "\n".join(lines).rstrip() + "\n"
