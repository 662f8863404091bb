"""The real-daemon tests' fixture: ``real_node``, one per daemon (tests/support/real_containerd.py)."""

from tests.support.real_containerd import real_node  # noqa: F401 (a fixture, found by pytest here)
