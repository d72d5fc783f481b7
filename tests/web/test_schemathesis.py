"""schemathesis fuzzes the JSON API from its own OpenAPI document, as an administrator with a
token, against a real server: no request may produce a server error (5xx), and every
response must match the document (status codes, content types, bodies)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.web.conftest import ADMIN, base_url
from tests.web.helpers import api_client

pytestmark = pytest.mark.slow
CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_schema_conformance",
])


def _st() -> list[str]:
    found = shutil.which("st", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("schemathesis is not installed in this environment (pip install it)")
    return [found]


def test_schemathesis_finds_no_server_error(web_server: RunningServer, tmp_path: Path) -> None:
    client = api_client(base_url(web_server), ADMIN)
    token = client.headers["Authorization"]
    client.close()
    command = [
        *_st(), "run", f"{base_url(web_server)}/api/openapi.json",
        "--header", f"Authorization:{token}",
        "--checks", CHECKS,
        "--max-examples", "12",
        "--max-time", "40",  # a budget: on a loaded machine 15 s can pass before one case ran
        "--seed", "20240607",
        # One worker: schemathesis's worker threads parse lambdas' source concurrently, which
        # trips a CPython 3.11 race in the AST constructor ("recursion depth mismatch", a
        # runtime error in 3 of 4 runs here). One thread generated more cases in the same 40 s
        # (3,809 against 3,241-3,377 with four).
        "--workers", "1",
        "--generation-database", "none",
        "--request-timeout", "20",
        "--no-color",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180,
                            cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "passed" in output.lower()
