"""Model builders shared by every method."""

from fedsim.models.registry import build_model

__all__ = ["build_model"]
