"""Run one function in several threads at once, for the tests of what two callers at the same moment must not
break (one download, one model host, one dataset, one seed stream each)."""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

T = TypeVar("T")


def run_at_once(target: Callable[[], T], count: int, timeout: float = 300.0) -> list[T]:
    """Start `count` threads on `target`, released together by a barrier, and return what each returned (in the
    order they finished). A thread that raised fails the test with its error; one still running after `timeout`
    seconds fails it too, rather than leaving the test to hang."""
    start = threading.Barrier(count)
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait(timeout)
            results.append(target())
        except BaseException as error:  # noqa: BLE001 - raised in the test's own thread below
            errors.append(error)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    running = sum(thread.is_alive() for thread in threads)
    if running:
        raise AssertionError(f"{running} of {count} threads still running after {timeout:.0f} s")
    if errors:
        raise AssertionError(f"{len(errors)} of {count} threads failed: {errors!r}") from errors[0]
    return results
