"""Alembic migrations for the metadata database; applied by ``Database.upgrade()``."""

from __future__ import annotations
