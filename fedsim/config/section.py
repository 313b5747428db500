"""The base of every config section (shared and method sections alike).

Its own module so that a section declared outside ``fedsim.config.schema`` (``[systems]``)
can use it without importing the schema that composes it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class Section(BaseModel):
    """Base for every section: no unknown keys, assignments re-validated, and no ``true``
    where a number belongs (pydantic would read it as 1). Method sections use it too."""

    # Non-finite floats are refused for every key: `privacy.clipping_norm = inf` would run
    # to a NaN loss, and no key means "infinity" (0 means "none" where that is allowed).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and field.annotation in (int, float):
            raise ValueError(f"expected a number, not {str(value).lower()}")
        return value
