"""`wg-failover ctl`'s human output (pure rendering, no responder) and its URL and token checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wg_failover.cli import CliError
from wg_failover.ctl import render
from wg_failover.ctl.api import read_token
from wg_failover.ctl.cli import check_url, parse_duration


def test_table_aligns_columns_and_shows_missing_values_as_dashes():
    out = render.table(["NAME", "OK", "LIST"], [["alpha", True, ["a", "b"]], ["b", False, None]])
    assert out == ("NAME   OK   LIST\n"
                   "alpha  yes  a,b\n"
                   "b      no   -\n")


def test_table_with_no_rows_is_the_header_only():
    assert render.table(["A", "B"], []) == "A  B\n"


def test_workers_table_shows_load_over_capacity():
    out = render.workers_table([
        {"name": "w1", "state": "up", "draining": False, "healthy": True, "assigned": 3,
         "capacity": 10, "region": "eu", "since": "2026-01-01T00:00:00Z"},
        {"name": "w2", "state": "recovering", "draining": True, "healthy": False,
         "assigned": 0, "since": "2026-01-02T00:00:00Z"},
    ]).splitlines()
    assert out[0] == ("NAME  STATE       DRAINING  HEALTHY  SUSPECT  ASSIGNED  RTT_MS  REGION  "
                      "SINCE")
    assert out[1].split() == ["w1", "up", "no", "yes", "no", "3/10", "-", "eu",
                              "2026-01-01T00:00:00Z"]
    assert out[2].split() == ["w2", "recovering", "yes", "no", "no", "0/-", "-", "-",
                              "2026-01-02T00:00:00Z"]


def test_workers_table_shows_a_suspect_mark_and_the_clients_rtt():
    out = render.workers_table([
        {"name": "w1", "state": "up", "draining": False, "healthy": True, "assigned": 2,
         "suspect": True, "suspect_until": "2026-01-01T00:00:30Z", "rtt_clients": 4,
         "rtt_ms_median": 12.5, "rtt_ms_p90": 30.1, "since": "2026-01-01T00:00:00Z"},
        {"name": "w2", "state": "up", "draining": False, "healthy": True, "assigned": 0,
         "rtt_clients": 0, "rtt_ms_median": None, "since": "2026-01-01T00:00:00Z"},
    ]).splitlines()
    assert out[1].split() == ["w1", "up", "no", "yes", "yes", "2/-", "12.5(4)", "-",
                              "2026-01-01T00:00:00Z"]
    assert out[2].split()[4:7] == ["no", "0/-", "-"]


def test_clients_table_lists_unusable_workers():
    out = render.clients_table([{"name": "c1", "worker": "w2", "version": 7,
                                 "unusable": ["w1", "w3"], "since": "t", "reason": "failover"}])
    assert out.splitlines()[1].split() == ["c1", "w2", "7", "w1,w3", "t", "failover"]


def test_client_block_with_probes_and_events():
    out = render.client_block("c1", {
        "assignment": {"client": "c1", "worker": "w2", "version": 3, "backups": ["w3"],
                       "reason": "failover", "since": "t0", "epoch": "abcdef12"},
        "unusable": ["w1"],
        "probes": {"time": "t1", "workers": {"w2": {"up": True, "rtt_ms": 1.5, "loss": 0.0},
                                             "w1": {"up": False}}},
        "events": [{"id": 9, "time": "t0", "ts": 0, "kind": "move", "worker": "w2",
                    "client": "c1", "data": {"from_worker": "w1", "to_worker": "w2"}}],
    })
    assert "worker   w2 (version 3, epoch abcdef12)" in out
    assert "backups  w3" in out and "unusable w1" in out
    probe_lines = [ln.split() for ln in out.splitlines() if ln.startswith("  w")]
    assert probe_lines == [["w1", "no", "-", "-"], ["w2", "yes", "1.5", "0.0"]]
    assert "from_worker=w1 to_worker=w2" in out
    assert out.endswith("\n") and not out.endswith("\n\n")


def test_client_block_without_probes_or_events():
    out = render.client_block("c1", {"assignment": {"worker": "w1", "version": 1}})
    assert "probes   none reported yet" in out and "recent events: none" in out


@pytest.mark.parametrize(("before", "after", "drain", "want"), [
    ({"draining": False, "assigned": 3}, {"name": "w1", "draining": True, "assigned": 0,
                                          "state": "up"}, True,
     "w1: drained; 3 clients moved off it (3 -> 0 assigned); state up\n"),
    ({"draining": True, "assigned": 0}, {"name": "w1", "draining": True, "assigned": 0,
                                         "state": "up"}, True,
     "w1: already drained; no client moved (0 assigned); state up\n"),
    ({"draining": True, "assigned": 0}, {"name": "w1", "draining": False, "assigned": 2,
                                         "state": "up"}, False,
     "w1: undrained; 2 clients moved onto it (0 -> 2 assigned); state up\n"),
    (None, {"name": "w1", "draining": False, "assigned": 1, "state": "down"}, False,
     "w1: undrained; 1 clients assigned now; state down\n"),
])
def test_drain_change_says_what_moved(before, after, drain, want):
    assert render.drain_change(before, after, drain) == want


@pytest.mark.parametrize("url", ["https://responder.example:8443", "http://127.0.0.1:8080",
                                 "http://[::1]:8080"])
def test_urls_allowed(url):
    check_url(url, insecure_http=False)


def test_plain_http_across_a_network_needs_insecure_http_and_hides_passwords():
    with pytest.raises(CliError, match="refusing plain HTTP to 192.0.2.1") as exc:
        check_url("http://user:secret@192.0.2.1:8080", insecure_http=False)
    assert "secret" not in str(exc.value)
    check_url("http://192.0.2.1:8080", insecure_http=True)
    with pytest.raises(CliError, match="expected an http"):
        check_url("ftp://host", insecure_http=True)


def test_read_token(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                    monkeypatch: pytest.MonkeyPatch):
    f = tmp_path / "t"
    f.write_text("s3cret\n")
    os.chmod(f, 0o600)
    assert read_token(str(f)) == "s3cret"
    assert capsys.readouterr().err == ""
    os.chmod(f, 0o640)
    assert read_token(str(f)) == "s3cret"
    err = capsys.readouterr().err
    assert "mode 0640" in err and "s3cret" not in err
    f.write_text("two tokens\n")
    with pytest.raises(CliError, match="one token on one line"):
        read_token(str(f))
    monkeypatch.delenv("WG_FAILOVER_TOKEN_FILE", raising=False)
    with pytest.raises(CliError, match="no admin token"):
        read_token(None)
    monkeypatch.setenv("WG_FAILOVER_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(CliError, match="cannot read"):
        read_token(None)


def test_fleet_diff_lists_each_change_and_says_what_happened():
    fleet_diff = render.fleet_diff
    d = {"version": 7, "workers_added": ["w4"], "clients_removed": ["c2"],
         "enrolled_kept": ["n1"], "settings_changed": True}
    out = fleet_diff(d, dry_run=True)
    assert "+ worker w4" in out and "- client c2" in out and "~ responder settings" in out
    assert "= n1" in out and "dry run: 3 change(s)" in out
    assert fleet_diff({"version": 7}, dry_run=False) == "no change (fleet version 7)\n"
    assert "applied: fleet version 7" in fleet_diff(d, dry_run=False)


def test_durations():
    assert [parse_duration(x) for x in ("90", "90s", "30m", "24h", "7d")] == \
        [90, 90, 1800, 86400, 604800]
    for bad in ("", "soon", "0s", "400d", "-1h"):
        with pytest.raises(CliError):
            parse_duration(bad)
