"""A real API fuzzer against the live responder: schemathesis (its CLI, every phase and every
check) generates requests from the responder's own /openapi.json and checks each answer against
it: no 5xx, every status code documented, every body and header as documented, schema-valid
requests accepted and invalid ones refused (hardening finding 9: generated clients and fuzzers
must be able to trust the document).

The responder is the real one (uvicorn, HTTPS from a throwaway CA, SQLite), with real tokens:
each route is called with the token it takes, and schemathesis also tries it without one (the
document says which routes need a bearer token). Path names come from the fleet most of the
time, so requests get past 404 into the body checks.

Bounded: at most 50 examples per operation and phase; the long-poll never waits (`wait=0`) and a
stream is read for one event or one second. Under CI the run is deterministic; elsewhere it is
seeded at random (WGFO_FUZZ_SEED=N repeats a run) and the seed is printed on failure.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.responder import ResponderProc, unlimited_reports

MAX_EXAMPLES = 50
# Operations whose bodies have rules across fields that no JSON schema states; schemathesis
# warns that it mostly generates bodies they reject, and that warning alone is not a problem.
CROSS_FIELD = {"POST /v1/enroll", "PUT /v1/fleet", "POST /v1/enroll-keys"}


def only_cross_field(out: str) -> bool:
    """The run's only warning is the validation mismatch, and only for CROSS_FIELD operations."""
    part = out.split("=== WARNINGS ===", 1)[-1].split("=== SUMMARY ===", 1)[0]
    titles = [ln for ln in part.splitlines() if ln.strip() and not ln.startswith("  ")
              and not ln.startswith("=") and not ln.startswith("💡")]
    ops = set(re.findall(r"^\s+- ((?:GET|POST|PUT|DELETE) \S+)", part, re.M))
    return (re.search(r"=+ 1 warning in", out) is not None and len(titles) == 1
            and titles[0].startswith("Schema validation mismatch") and bool(ops)
            and ops <= CROSS_FIELD)


def _config(p: ResponderProc, seed: int | None, enroll_key: str) -> str:
    t = p.tokens
    rand = "deterministic = true" if seed is None else ""
    return f"""
{'' if seed is None else f'seed = {seed}'}
tls-verify = "{p.ca_file}"
request-timeout = 10
max-stream-events = 1
color = false

[dictionaries.clients]
values = ["c1"]
[dictionaries.workers]
values = ["w1", "w2", "w3"]

[generation]
max-examples = {MAX_EXAMPLES}
database = "none"
{rand}

# Removing and revoking with the admin token, on names that are mostly not in the fleet (404):
# removing c1 or a worker would turn the rest of the run into 401s; a removal also waits for
# the moved clients (up to 10 s).
[[operations]]
include-method = "DELETE"
headers = {{ Authorization = "Bearer {t['admin']}" }}

# A fleet put through the API is only ever a dry run here, for the same reason. A fleet, a key
# request and an enrollment have rules across fields that no JSON schema states (unique names
# and keys, addresses in the pool, a worker's endpoint): for these three the "schema-valid
# accepted" check also takes the answers that name such a rule (403, 409, 422 with the field);
# that most generated bodies break such a rule is the one warning allowed (CROSS_FIELD below).
[[operations]]
include-path = "/v1/fleet"
headers = {{ Authorization = "Bearer {t['admin']}" }}
parameters = {{ "query.dry_run" = true }}
checks = {{ positive_data_acceptance = {{ expected-statuses = ["2XX", 422] }} }}

# (Filters in one entry are alternatives: `include-name` names one operation.)
[[operations]]
include-name = "POST /v1/enroll-keys"
headers = {{ Authorization = "Bearer {t['admin']}" }}
checks = {{ positive_data_acceptance = {{ expected-statuses = ["2XX", 422] }} }}

[[operations]]
include-path = "/v1/enroll-keys"
headers = {{ Authorization = "Bearer {t['admin']}" }}

[[operations]]
include-path = "/v1/enroll"
headers = {{ Authorization = "Bearer {enroll_key}" }}
checks = {{ positive_data_acceptance = {{ expected-statuses = ["2XX", 403, 409, 422] }} }}

# The client's own routes with its own token, mostly its own name (else 401). A long-poll waits
# up to 60 s by contract: here it answers at once.
[[operations]]
include-path-regex = "^/v1/clients/"
headers = {{ Authorization = "Bearer {t['c1']}" }}
parameters = {{ "path.name" = {{ dictionary = "clients", probability = 0.8 }}, "query.wait" = 0 }}

# A stream sends its first event at once, unless the caller is up to date: then it waits.
[[operations]]
include-path = ["/v1/clients/{{name}}/assignment/stream", "/v1/clients/{{name}}/view/stream",
                "/v1/workers/{{name}}/peers/stream"]
request-timeout = 1

[[operations]]
include-path = "/v1/alerts"
headers = {{ Authorization = "Bearer {t['alert']}" }}

[[operations]]
include-path-regex = "^/v1/workers/.name./"
headers = {{ Authorization = "Bearer {t['admin']}" }}
parameters = {{ "path.name" = {{ dictionary = "workers", probability = 0.7 }}, "query.wait" = 0 }}

[[operations]]
include-path = ["/v1/workers", "/v1/targets"]
headers = {{ Authorization = "Bearer {t['read']}" }}

[[operations]]
include-path = ["/v1/events", "/v1/clients"]
headers = {{ Authorization = "Bearer {t['admin']}" }}
"""


@pytest.mark.slow
def test_schemathesis_finds_nothing_on_the_live_responder(tmp_path: Path) -> None:
    pytest.importorskip("schemathesis", reason="schemathesis is in the test extra")
    if os.environ.get("CI"):
        seed = None
    else:
        seed = int(os.environ.get("WGFO_FUZZ_SEED") or random.randrange(1 << 32))
    p = ResponderProc.start(tmp_path / "responder", tls=True, args=unlimited_reports())
    try:
        r = p.http("admin").post("/v1/enroll-keys", json={"kind": "client", "reusable": True})
        assert r.status_code == 201, r.text
        cfg = tmp_path / "schemathesis.toml"
        cfg.write_text(_config(p, seed, r.json()["key"]))
        proc = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(cfg), "run",
             f"{p.url}/openapi.json", "--checks", "all"],
            capture_output=True, text=True, cwd=tmp_path, timeout=600,
            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""})
        out = proc.stdout + proc.stderr
        how = "deterministic (CI)" if seed is None else f"WGFO_FUZZ_SEED={seed}"
        assert proc.returncode == 0 and ("No issues found" in out or only_cross_field(out)), \
            f"schemathesis ({how}) found problems:\n{out[-20000:]}\n--- responder ---\n" \
            f"{p.log()[-3000:]}"
        # Every operation was reached, with working tokens (else it would warn).
        ops = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", out)
        assert ops and ops.group(1) == ops.group(2) == ops.group(3), out[-3000:]
        assert int(ops.group(3)) >= 14, out[-3000:]
        assert "Authentication failed" not in out and "Missing test data" not in out, \
            out[-5000:]
        assert "Internal Server Error" not in p.log() and "Traceback" not in p.log(), p.log()
    finally:
        p.stop()
