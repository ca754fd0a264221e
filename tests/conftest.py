"""Shared fixtures. Slow fixtures (a booted UVM, a private containerd) are session-scoped so the
end-to-end tests share them; they live in tests/support and are imported here."""

from __future__ import annotations

from tests.support.containerd import containerd
from tests.support.uvm import booted_uvm

__all__ = ["booted_uvm", "containerd"]
