"""bench/baselines.py's pure parts: the gap, the summary, the table and JSON, keepalived.conf."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load():
    # bench/ is not a package: load the script as a module, as `python bench/baselines.py` would
    # (it imports bench/failover.py by the same path).
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("baselines", BENCH / "baselines.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["baselines"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


bl = _load()


def test_gap_after_kill_skips_echoes_in_flight():
    # Replies every 10 ms up to the kill at t=1.0, one in flight at 1.005, then silence to 1.4.
    replies = [0.97, 0.98, 0.99, 1.0, 1.005, 1.4, 1.41]
    assert abs(bl.gap_after_kill(replies, 1.0) - 0.395) < 1e-9
    # The naive "first reply after the kill" would see 5 ms.
    assert abs(bl.gap_around(replies, 1.0) - 0.005) < 1e-9


def test_gap_after_kill_none_when_traffic_never_returns():
    assert bl.gap_after_kill([0.9, 1.0, 1.05], 1.0) is None
    assert bl.gap_after_kill([], 1.0) is None


def test_summary_counts_never_as_worst():
    r = bl.Result("twopeer", "two peers", gaps=[None, None], timeout=30)
    s = bl.summarize(r)
    assert s["kills"] == 2 and s["never"] == 2 and s["max"] == float("inf")
    mixed = bl.summarize(bl.Result("x", "x", gaps=[0.1, 0.2, None], timeout=5))
    assert mixed["p50"] == 200 and mixed["max"] == float("inf")
    ok = bl.summarize(bl.Result("fast", "fast", gaps=[0.3, 0.4, 0.5], timeout=10))
    assert (ok["p50"], ok["max"]) == (400, 500)


def test_table_and_json():
    results = [bl.Result("fast", "wg-failover fast path", gaps=[0.4, 0.4], timeout=10,
                         drain="0 lost"),
               bl.Result("article", "article (scaled)", gaps=[2.8, 3.2], timeout=24,
                         drain="restart", notes=["SCALED"]),
               bl.Result("twopeer", "two peers", gaps=[None], timeout=30, drain="none")]
    table = bl.render_table(results)
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["approach", "kills"]
    assert "never (>30 s)" in table and "inf" in table
    assert "8.0x" in table  # 3200 ms / 400 ms, p50 nearest rank
    assert "article (scaled): SCALED" in table
    data = json.loads(bl.to_json(results))
    assert [d["approach"] for d in data] == ["fast", "article", "twopeer"]
    assert data[2]["summary"]["max"] == "never"
    assert data[1]["p50_vs_fast"] == "8.0x"


def test_ratio_without_fast_path():
    assert bl.ratio(100.0, None) == "-"
    assert bl.ratio(float("inf"), 400.0) == "inf"


def test_keepalived_conf():
    conf = bl.keepalived_conf("bb1_w1", "bb1w0", "198.18.0.10", "198.18.0.11",
                              "198.18.0.100", 150)
    assert "unicast_src_ip 198.18.0.10" in conf
    assert "198.18.0.11" in conf.split("unicast_peer", 1)[1]
    assert "198.18.0.100/24 dev eth0" in conf
    assert "priority 150" in conf and "advert_int 1" in conf
    assert "nopreempt" in conf and "state BACKUP" in conf
    assert 'show bb1w0"' in conf and "chk_wg" in conf.split("track_script")[1]
    assert conf.count("{") == conf.count("}")


def test_article_implied_unscaled():
    text = bl.article_implied()
    assert "30 s x 3 misses = 60-90 s" in text


def test_peer_conf():
    conf = bl.peer_conf("PRIV", [("PUB", "198.18.0.10:51820", ["10.99.0.0/24", "10.66.0.1/32"])])
    assert conf.startswith("[Interface]\nPrivateKey = PRIV\n")
    assert "AllowedIPs = 10.99.0.0/24, 10.66.0.1/32" in conf
    assert "Endpoint = 198.18.0.100" not in conf


def test_longest_silence_over_a_drain_window():
    # Replies every 10 ms, one lost echo at 1.03 (a 20 ms silence), the drain from 1.0 to 1.1.
    replies = [0.99, 1.0, 1.01, 1.02, 1.04, 1.05, 1.1, 1.11]
    assert abs(bl.longest_silence(replies, 1.0, 1.1) - 0.05) < 1e-9  # 1.05 -> 1.1
    assert abs(bl.longest_silence(replies, 1.0, 1.05) - 0.02) < 1e-9
    assert bl.longest_silence(replies, 1.0, 1.2) is None  # nothing after the window yet
    assert bl.longest_silence(replies, 0.5, 1.0) is None  # nothing before it
    assert bl.longest_silence([1.0], 1.0, 1.0) == 0.0


def test_drain_cell():
    assert bl.drain_cell(bl.Result("twopeer", "t", drain_none="nothing moves it")) \
        == "n/a (nothing moves it)"
    assert bl.drain_cell(bl.Result("fast", "f", drain="cited figure")) == "cited figure"
    assert bl.drain_cell(bl.Result("x", "x")) == "-"
    one = bl.Result("keepalived", "k", timeout=30, drain="stop keepalived", drain_gaps=[15.1])
    assert bl.drain_cell(one) == "stop keepalived: gap 15.1 s"
    many = bl.Result("control", "c", timeout=60, drain="ctl drain",
                     drain_gaps=[0.012, 0.02, 0.011], drain_lost=[0, 1, 0])
    assert bl.drain_cell(many) == "ctl drain: gap p50 12 ms, max 20 ms over 3, 1 echoes lost"
    stuck = bl.Result("control", "c", timeout=60, drain="ctl drain", drain_gaps=[0.01, None])
    assert bl.drain_cell(stuck) == "ctl drain: never (>60 s) in 1 of 2"


def test_fmt_load():
    assert bl.fmt_load([]) == "-"
    assert bl.fmt_load([1.21, 1.24]) == "1.2"
    assert bl.fmt_load([2.1, 0.8, 1.5]) == "0.8-2.1"


def test_table_has_the_control_path_its_ratio_load_and_drains():
    results = [bl.Result("fast", "wg-failover fast path", gaps=[0.4], timeout=10, load=[0.5]),
               bl.Result("control", "wg-failover control path", gaps=[10.0, 12.0], timeout=60,
                         drain="ctl drain", drain_gaps=[0.01], drain_lost=[0], load=[1.0, 2.0]),
               bl.Result("article", "article", gaps=[3.0], timeout=24, drain_none="a kill")]
    table = bl.render_table(results)
    head, _rule, fast, control, article = table.splitlines()[:5]
    assert "load 1m" in head and "drain (planned maintenance)" in head
    assert "30.0x" in control  # 12 s / 400 ms: the control path's p50 against the fast path's
    assert "1.0-2.0" in control and "ctl drain: gap 10 ms, 0 echoes lost" in control
    assert article.endswith("n/a (a kill)")
    assert fast.split()[-1] == "-"  # no drain figure given
    data = json.loads(bl.to_json(results))
    assert data[1]["drain_cost"] == "ctl drain: gap 10 ms, 0 echoes lost"
    assert data[1]["p50_vs_fast"] == "30.0x" and data[1]["load"] == [1.0, 2.0]


def test_drain_cell_with_the_idle_baseline():
    r = bl.Result("control", "c", timeout=60, drain="ctl drain", drain_gaps=[0.084, 0.099],
                  drain_lost=[0, 0], drain_idle=[0.06, 0.07])
    assert bl.drain_cell(r) == ("ctl drain: gap p50 99 ms, max 99 ms over 2 (same window before "
                                "it, no drain: max 70 ms), 0 echoes lost")
