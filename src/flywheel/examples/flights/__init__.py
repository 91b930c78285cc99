"""The NYC flights 2013 example: definitions, data preparation, training and the demo loop."""

from __future__ import annotations

__all__: list[str] = []
