"""Settings for the whole test suite.

Garbage collection's grace period is 0 unless a test sets one: most tests prune once and
expect the space freed; the tests of the grace period pass it explicitly."""

import os

os.environ.setdefault("CAIRN_GC_GRACE", "0")
