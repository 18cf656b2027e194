"""Settings for the whole test suite.

Garbage collection's grace period is 0 unless a test sets one: most tests prune once and
expect the space freed; the tests of the grace period pass it explicitly.

Test files holding a `slow` or `campaign` test run first. `make test` hands whole files to its
workers in collection order, so the longest files (the install, the campaigns, the three-host
runs) start at once and overlap the rest, instead of running alone at the end of the suite."""

import os

import pytest

os.environ.setdefault("CAIRN_GC_GRACE", "0")

LONG_MARKS = ("slow", "campaign")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    long_files = {item.path for item in items if any(item.get_closest_marker(m) for m in LONG_MARKS)}
    items.sort(key=lambda item: item.path not in long_files)  # stable: each group keeps its order
