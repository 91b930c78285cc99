"""Names of things users create (models, aliases, views, deployments) and their allow-list.

Names are never used as file paths; they are still held to a strict allow-list so that they are
safe in URLs, logs and SQL identifiers-as-data.
"""

from __future__ import annotations

import re

from flywheel.errors import ValidationError

__all__ = ["NAME_PATTERN", "validate_name"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def validate_name(field: str, value: object) -> str:
    """Return ``value`` if it is an allowed name, else raise ``ValidationError`` naming ``field``.

    Examples:
        >>> validate_name("model", "delays")
        'delays'
        >>> validate_name("model", "../etc")
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: model: expected a name matching ...
    """
    if not isinstance(value, str) or NAME_PATTERN.fullmatch(value) is None or ".." in value:
        raise ValidationError(field, f"expected a name matching {NAME_PATTERN.pattern}")
    return value
