"""`exchange bench signing|store|e2e|fanout`: run a benchmark from benchmarks/ (figures beside their baseline)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from exchange.cli._common import command_help
from exchange.errors import ConfigError

BENCHMARKS = {
    "signing": "bench_signing.py",
    "store": "bench_store.py",
    "e2e": "bench_e2e.py",
    "fanout": "bench_fanout.py",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run a benchmark (signing, store, e2e, fanout); extra arguments go to it",
        **command_help(
            "Run one of the benchmarks in benchmarks/ (a source checkout): each prints its figures beside a "
            "baseline measured in the same run. Arguments after the benchmark's name are passed to it.",
            "exchange bench signing",
            "exchange bench e2e --repeat 3",
            "exchange bench fanout",
        ),
    )
    p.add_argument("which", choices=sorted(BENCHMARKS))
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    # benchmarks/ sits beside the package in a source checkout; it is not part of the wheel.
    path = Path(__file__).resolve().parents[2] / "benchmarks" / BENCHMARKS[args.which]
    if not path.exists():
        raise ConfigError(f"{path} is missing: benchmarks run from a source checkout (pip install -e .)")
    spec = importlib.util.spec_from_file_location(f"bench_{args.which}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return int(module.main(args.rest) or 0)
