"""Cost of the bounded JSON reader (exchange.metadata.jsontext) beside plain json.loads, same run.

    .venv/bin/python benchmarks/bench_json_limits.py

Prints the best of 5 runs per input, in milliseconds. Hostile inputs are refused (plain
json.loads raises RecursionError / ValueError on some of them, shown as its time to fail).
"""

from __future__ import annotations

import contextlib
import json
import time

from exchange.errors import ExchangeError
from exchange.metadata import load_json

MIB = 1 << 20
CASES = {
    "ordinary metadata (2 KB)": json.dumps(
        {
            "subject": "Chỉ thị " * 40,
            "recipients": ["000.00.00.H41"] * 50,
            "code": {"number": "12", "notation": "CT-TTg"},
        }
    ).encode(),
    "flat array of 0, 1 MiB": b"[" + b"0," * (MIB // 2 - 2) + b"0]",
    "array of {}, 1 MiB": b"[" + b"{}," * (MIB // 3 - 2) + b"{}]",
    "strings, 1 MiB": json.dumps(["[[[{{{" * 10] * (MIB // 70)).encode(),
    "[ nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "[ x 1 MiB (unclosed)": b"[" * MIB,
    'unterminated string of \\" x 500k': b'"' + b'\\"' * 500_000,
    "integer of 5,000 digits": b'{"priority": ' + b"9" * 5000 + b"}",
}


def best(fn, raw: bytes) -> float:
    times = []
    for _ in range(5):
        started = time.perf_counter()
        with contextlib.suppress(ExchangeError, ValueError, RecursionError):  # refusing is what is timed
            fn(raw)
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def main() -> None:
    print(f"{'input':32} {'json.loads':>12} {'load_json':>12}")
    for name, raw in CASES.items():
        plain = best(json.loads, raw)
        bounded = best(lambda r: load_json(r, "body"), raw)
        print(f"{name:32} {plain:10.1f}ms {bounded:10.1f}ms")


if __name__ == "__main__":
    main()
