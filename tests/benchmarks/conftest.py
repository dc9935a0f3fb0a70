"""Fixtures for the benchmark scripts' tests."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """`bench("gpu_full")` imports a benchmark script as its own module (as it runs: benchmarks/ on sys.path,
    for the tests of one test module)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(BENCHMARKS))
