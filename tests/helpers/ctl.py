"""Run `wg-failover ctl` as an operator does: a real subprocess against a ResponderProc, with
the admin token in a 0600 file and the responder's CA pinned; every run asserts no traceback.

    ctl(p, *args, token=None, ca=None, env=None)   run ctl against responder `p`
    run(*args, env=None)                           run ctl with exactly these arguments
    refused(result, *needles)                      exit 2 and each needle on stderr
    token_file(p, who="admin", mode=0o600)         a token file for `who`
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.helpers.responder import WG_FAILOVER, ResponderProc


def token_file(p: ResponderProc, who: str = "admin", mode: int = 0o600) -> Path:
    path = p.fleet_path.parent / f"{who}-{mode:o}.token"
    path.write_text(p.tokens[who] + "\n")
    path.chmod(mode)
    return path


def ctl(p: ResponderProc, *args: str, token: Path | None = None, ca: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = ["--responder", p.url, "--ca-file", str(ca or p.ca_file),
            "--token-file", str(token or token_file(p))]
    return run(*base, *args, env=env)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("WG_FAILOVER_RESPONDER", "WG_FAILOVER_TOKEN_FILE",
                             "WG_FAILOVER_FLEET")}
    full_env.update(env or {})
    r = subprocess.run([WG_FAILOVER, "ctl", *args], capture_output=True, text=True, timeout=60,
                       env=full_env)
    assert "Traceback" not in r.stderr + r.stdout
    return r


def refused(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    for n in needles:
        assert n in r.stderr, r.stderr


