"""Deprecated location of the conformance kit: import :mod:`exchange.conformance` instead.

Kept for adapter packages written against 0.1; it will be removed in a later release.
"""

from __future__ import annotations

import warnings

from exchange.conformance import *  # noqa: F403
from exchange.conformance import __all__  # noqa: F401

warnings.warn("exchange.adapters.conformance moved to exchange.conformance", DeprecationWarning, stacklevel=2)
