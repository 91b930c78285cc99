"""Public testing helpers: throwaway servers and backend conformance suites."""

from __future__ import annotations

__all__: list[str] = []
