"""Registers the test-only second architecture before collection, so the registry-parametrized invariants cover it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import toy_arch  # noqa: E402

toy_arch.ensure_registered()
