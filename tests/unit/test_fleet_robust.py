"""Fleet files that used to crash: every input gets a field-path error or a one-line reason.

The cases are the ones an adversarial pass found (a one-character `? ` typo, nesting thousands
deep, a 5,000-digit integer, `.inf` seconds, a malformed URL), plus random mutations of a valid
file: whatever the bytes, `parse_fleet` raises FleetError or returns a Fleet, and the console
script exits 2 without a traceback.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.fleets import VALID
from wg_failover.exporter.collector import FleetSource
from wg_failover.fleet import FleetError, parse_fleet

URL_LINE = 'url: "http://master.example.net:8080"'

BROKEN = {
    "stray question mark (list key)": ("workers:\n  - ? [a, b]\n    : 1\n",
                                       "line 2, column 7", "cannot be a key"),
    "stray question mark (mapping key)": (VALID.replace("workers:", "? workers:", 1),
                                          "line 1", "cannot be a key"),
    "nesting 3,000 deep (flow)": ("workers: " + "[" * 3000 + "]" * 3000 + "\n",
                                  "line 1", "nested more than"),
    "nesting 500 deep (block)": ("workers:\n" + "".join("  " * (i + 1) + f"a{i}:\n"
                                                        for i in range(500)),
                                 "line", "nested more than"),
    "5,000-digit integer": ("workers: []\nresponder:\n  hold_down_seconds: " + "9" * 5000 + "\n",
                            "line 3", "too long"),
    ".inf seconds": (VALID.replace("hold_down_seconds: 60", "hold_down_seconds: .inf"),
                     "responder.hold_down_seconds", "finite"),
    ".nan seconds": (VALID.replace("hold_down_seconds: 60", "hold_down_seconds: .nan"),
                     "responder.hold_down_seconds", "finite"),
    "a week of hold-down": (VALID.replace("hold_down_seconds: 60", "hold_down_seconds: 604800"),
                            "responder.hold_down_seconds", "less than or equal"),
    "unclosed IPv6 URL": (VALID.replace(URL_LINE, "url: 'http://[::1'"),
                          "responder.url", "Invalid IPv6 URL"),
    "port out of range": (VALID.replace(URL_LINE, "url: 'http://master:99999'"),
                          "responder.url", "Port out of range"),
    "capacity beyond reason": (VALID.replace("capacity: 200", "capacity: 10000000000"),
                               "workers[0].capacity", "less than or equal"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_file_names_the_place(name: str) -> None:
    text, where, what = BROKEN[name]
    with pytest.raises(FleetError) as exc:
        parse_fleet(text, "fleet.yaml")
    rendered = exc.value.render()
    assert where in rendered and what in rendered, rendered


def test_valid_file_still_parses() -> None:
    assert [w.name for w in parse_fleet(VALID).workers] == ["fra-1", "ams-1"]


_mutation = st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 8),
                      st.text(alphabet="?[]{}:-&*!|>'\"#%@`\n\t 9.e", max_size=6))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_files_never_crash(mutations: list[tuple[int, int, str]]) -> None:
    text = VALID
    for at, cut, insert in mutations:
        at = min(at, len(text))
        text = text[:at] + insert + text[at + cut:]
    try:
        parse_fleet(text, "fleet.yaml")
    except FleetError as exc:
        assert exc.render().startswith("fleet.yaml: invalid fleet file")


@pytest.mark.parametrize("name", ["stray question mark (mapping key)", "nesting 3,000 deep (flow)",
                                  "5,000-digit integer"])
def test_check_exits_2_without_traceback(tmp_path, name: str) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(BROKEN[name][0])
    r = subprocess.run([sys.executable, "-m", "wg_failover.cli", "check", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and str(path) in r.stderr


def test_running_exporter_keeps_last_good_fleet_on_a_typo(tmp_path, caplog) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(VALID)
    source = FleetSource(path, parse_fleet(VALID))
    path.write_text(VALID.replace("workers:", "? workers:", 1))
    os.utime(path, (1, 1))  # a new mtime even on a coarse clock
    with caplog.at_level(logging.ERROR):
        fleet = source.get()
    assert [w.name for w in fleet.workers] == ["fra-1", "ams-1"]
    assert "keeping the previous one" in caplog.text


@pytest.mark.parametrize("argv", [
    ["responder", "--listen", "127.0.0.1:0", "--db", "{tmp}/r.db", "--fleet", "{fleet}"],
    ["switcher", "--fleet", "{fleet}", "--client", "alice-laptop", "--interface", "wgfo-none"],
    ["exporter", "--listen", "127.0.0.1:0", "--fleet", "{fleet}"],
])
def test_processes_refuse_a_crashing_fleet_file_at_start(tmp_path, argv: list[str]) -> None:
    """The same typo at start: the field-path error and exit 2 from every process that reads the
    fleet file, before it serves or touches anything."""
    path = tmp_path / "fleet.yaml"
    path.write_text(BROKEN["stray question mark (mapping key)"][0])
    args = [a.format(tmp=tmp_path, fleet=path) for a in argv]
    r = subprocess.run([sys.executable, "-m", "wg_failover.cli", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    assert f"{path}: invalid fleet file" in r.stderr and "cannot be a key" in r.stderr
