"""Schemathesis over the live OpenAPI document: generated requests, valid and invalid, for every
operation, as an admin and as a client. No answer may be a 5xx, and every answer must be one
the document declares (status code, content type, body schema). One 5xx is the truth here: a
message for a workflow (a command, a decision) that no worker takes within the API's bound
answers 503 with Retry-After, as documented, and in this namespace no worker polls; those are
counted apart (``no_worker``), every other 5xx fails the test.

The real app is served over real HTTP on the session's Temporal dev server and Postgres, in a
Temporal namespace of its own where no worker polls: a generated start is accepted (202) and
runs nothing, so random input never reaches the outside world (websites, Stripe) and never
slows the rest of the suite. Left out: the Pending Actions stream (server-sent events: one
answer lasts up to an hour). The signed webhooks are fuzzed unsigned (every answer 401 or 404);
tests/test_bad_input.py sends them correctly signed bodies that are not JSON.

The figures (requests, 5xx, schema violations) are written to build/fuzz/summary.json and shown
at the end of the run.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from tests.conftest import ROOT, Tokens, serve, unique
from core.settings import Settings

pytestmark = pytest.mark.long(seconds=90)

REPORTS = ROOT / "build" / "fuzz"
# 5xx are counted from the recorded requests below (schemathesis' not_a_server_error cannot tell
# the documented 503 of a message no worker took from a fault).
CHECKS = "status_code_conformance,content_type_conformance,response_schema_conformance"
EXCLUDED_PATHS = ["/v1/pending-actions/stream"]
MAX_EXAMPLES = 8  # per operation, in the examples phase
# The examples and coverage phases: the document's examples, then each operation's boundary and
# invalid values (missing, wrong-typed and out-of-range fields, bad path parameters), about 100
# requests a second here. With Hypothesis' random generation (the fuzzing phase) as well, the
# same time made only 300-1,000 requests, and a loaded machine fell below MIN_REQUESTS.
PHASES = "examples,coverage"
MAX_SECONDS = 40  # per identity: two identities stay within about a minute and a half
MIN_REQUESTS = 500  # per identity: about 3,500 here, every operation reached
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def _no_worker(entry: dict[str, Any]) -> bool:
    """A 503 with Retry-After from a message to a workflow (``.../commands/...``, a decision):
    no worker took it in time, which is all this namespace can do."""
    response = entry["response"]
    headers = {h["name"].lower() for h in response["headers"]}
    url = entry["request"]["url"]
    return (response["status"] == 503 and "retry-after" in headers
            and ("/commands/" in url or url.rstrip("/").endswith("/decision")))


async def _run(api_url: str, who: str, headers: dict[str, str]) -> dict[str, Any]:
    """One schemathesis run; its figures, from its own JSON report and the HAR of every request."""
    out = REPORTS / who
    out.mkdir(parents=True, exist_ok=True)
    args = [
        str(SCHEMATHESIS), "run", f"{api_url}/schema/openapi.json",
        "--checks", CHECKS,
        "--phases", PHASES,
        "--max-examples", str(MAX_EXAMPLES),
        "--max-time", str(MAX_SECONDS),
        "--seed", "20261125",
        # One worker thread: Hypothesis raises the recursion limit while it runs a test, and
        # CPython 3.11's ast.parse fails when another thread does so meanwhile.
        "--workers", "1",
        "--request-timeout", "20",
        "--no-shrink",
        "--report", "json,har",
        "--report-json-path", str(out / "report.json"),
        "--report-har-path", str(out / "requests.har"),
        "--output-truncate", "false",
        *(a for path in EXCLUDED_PATHS for a in ("--exclude-path", path)),
        *(a for name, value in headers.items() for a in ("-H", f"{name}: {value}")),
    ]
    proc = await asyncio.create_subprocess_exec(*args, cwd=out, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=MAX_SECONDS + 60)
    (out / "output.txt").write_bytes(stdout)
    report = json.loads((out / "report.json").read_text())
    entries = json.loads((out / "requests.har").read_text())["log"]["entries"]
    statuses = Counter(e["response"]["status"] for e in entries)
    no_worker = [e for e in entries if _no_worker(e)]
    failures = {f["title"]: f["count"] for f in report["failures"]}
    return {
        "identity": who,
        "exit_code": proc.returncode,
        "operations": report["operations"]["tested"],
        "test_cases": report["test_cases"]["generated"],
        "requests": len(entries),
        "server_errors": sum(n for status, n in statuses.items() if status >= 500) - len(no_worker),
        "no_worker": len(no_worker),
        "schema_violations": sum(n for title, n in failures.items() if "server error" not in title.lower()),
        "statuses": {str(s): n for s, n in sorted(statuses.items())},
        "failures": failures,
        "errors": report["errors"],
        "output": stdout.decode(errors="replace")[-4000:],
    }


async def test_the_openapi_document_holds_under_fuzzing(
    settings: Settings, namespace: str, tokens: Tokens, request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    isolated = settings.model_copy(update={"temporal": settings.temporal.model_copy(update={"namespace": namespace})})
    async with serve(create_app(isolated)) as api_url:
        runs = [await _run(api_url, "admin", tokens.admin()),
                await _run(api_url, "client", tokens.client(unique("fuzz")))]

    totals = {k: sum(r[k] for r in runs) for k in ("requests", "server_errors", "schema_violations", "no_worker")}
    summary = {**totals, "runs": [{k: v for k, v in r.items() if k != "output"} for r in runs]}
    (REPORTS / "summary.json").write_text(json.dumps(summary, indent=2))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        with capsys.disabled():  # shown in every run, passed or not
            reporter.write_line(
                f"\nschemathesis: {totals['requests']} requests over {runs[0]['operations']} operations "
                f"(admin, client), {totals['server_errors']} 5xx, {totals['schema_violations']} schema "
                f"violations, {totals['no_worker']} messages no worker took (503, documented; details in "
                f"{REPORTS.relative_to(ROOT)}/)")

    for r in runs:
        assert r["operations"] >= 25 and r["requests"] >= MIN_REQUESTS, r
        assert not r["errors"], r
        assert r["server_errors"] == 0 and not r["failures"] and r["exit_code"] == 0, r["output"]
