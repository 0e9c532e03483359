"""`exchange bench store` runs end to end on a small count and prints every figure beside its baseline."""

from __future__ import annotations

import re

from exchange.cli.main import main


def test_bench_store_prints_each_backend_beside_the_raw_baseline(capsys) -> None:
    assert main(["bench", "store", "--messages", "30", "--concurrency", "4", "--postgres", ""]) == 0
    out = capsys.readouterr().out
    baseline = re.search(r"raw sqlite3, synchronous=full \(baseline\)\s+(\d+)", out)
    assert baseline and int(baseline.group(1)) > 0
    for label in ("store, SQLite synchronous=full", "store, SQLite synchronous=normal"):
        row = re.search(re.escape(label) + r"\s+(\d+)\s+(\d+\.\d\d)", out)
        assert row, f"no figure for {label!r} in:\n{out}"
        assert int(row.group(1)) > 0 and float(row.group(2)) > 0
