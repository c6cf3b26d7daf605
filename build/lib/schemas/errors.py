"""The one error type every decoder raises: it names the field and the offending value."""
from __future__ import annotations


class SchemaError(ValueError):
    """A message that cannot be accepted. `field` and `value` say exactly what was wrong."""

    def __init__(self, type_name: str, field: str, value: object, reason: str) -> None:
        self.type_name = type_name
        self.field = field
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{type_name}.{field}={shown}: {reason}")
