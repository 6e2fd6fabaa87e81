"""The framework's own floor, for ``bench_spine.py``: a bare Litestar app served by uvicorn as the
API is served (``workers.cli api``: same uvicorn options), with one route that validates the
same body as ``POST /v1/workflows/onboarding`` (the onboarding input) and nothing else: no
auth, no middleware, no telemetry, no Temporal.

    python bench/bare_litestar.py --port PORT

An invalid body is answered 400 by Litestar's validation, as the API's floor is; the bench times
both in the same run, so the API's own cost per request is what its floor adds to this one.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import uvicorn  # noqa: E402
from litestar import Litestar, get, post  # noqa: E402

from workflows.onboarding import OnboardingInput  # noqa: E402


@post("/v1/workflows/onboarding", status_code=202)
async def start(data: OnboardingInput) -> dict[str, str]:
    return {"workflow_id": f"{data.tenant_id}:onboarding:{data.tenant_id}"}


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    uvicorn.run(Litestar([start, health], debug=False), host="127.0.0.1", port=args.port, log_level="warning",
                log_config=None, access_log=False, timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
