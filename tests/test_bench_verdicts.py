"""bench/common.py's verdicts: each target judged by the noise of its own measures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH_COMMON = Path(__file__).resolve().parents[1] / "bench" / "common.py"


def load_common():
    spec = importlib.util.spec_from_file_location("bench_common", BENCH_COMMON)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


common = load_common()


def tally(others_seconds: float, capacity: float = 100.0):
    noise = common.NoiseTally()
    noise.add(others_seconds, capacity)
    return noise


def test_tally_sums_its_windows():
    noise = tally(5.0)
    noise.add(35.0, 100.0)
    assert noise.others_share == 40.0 / 200.0
    assert not noise.is_quiet()
    assert common.NoiseTally().others_share == 0.0


def test_a_quiet_measure_is_judged_beside_a_noisy_one(capsys):
    quiet, noisy = tally(1.0), tally(50.0)
    status = common.report([
        common.Check("ratio", "0.5", False, noise=quiet),
        common.Check("rss", "60 MiB", True, noise=noisy),
    ])
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
            if line.startswith(("ratio", "rss"))}
    assert "MISSED" in rows["ratio"] and "no verdict" not in rows["ratio"]
    assert "noisy: no verdict (would be met)" in rows["rss"]
    assert rows["rss"].rstrip().endswith("50%")
    assert status == 1  # a judged target missed


def test_a_noisy_measure_alone_gives_no_verdict(capsys):
    status = common.report([
        common.Check("ratio", "0.9", True, noise=tally(1.0)),
        common.Check("rss", "70 MiB", False, noise=tally(50.0)),
    ])
    assert "noisy: no verdict (would be MISSED)" in capsys.readouterr().out
    assert status == common.NOISY_EXIT


def test_rows_without_their_own_tally_follow_the_run():
    assert common.report([common.Check("ratio", "0.9", True)]) == 0
    assert common.report([common.Check("ratio", "0.5", False)]) == 1
