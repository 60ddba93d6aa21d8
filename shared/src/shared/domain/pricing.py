"""Estimated cost from the per-model price table in settings."""

from __future__ import annotations

from decimal import Decimal

from shared.schemas import GenerationParams, RenderSpec

LOCAL_MODEL = "local"


class UnsupportedParams(ValueError):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def check_supported(params: GenerationParams, *, provider: str, prices: dict[str, Decimal]) -> None:
    """Refuse at once what the configured provider cannot honour (never a late failure)."""
    if params.model is None:
        return
    if provider == "local" and params.model != LOCAL_MODEL:
        raise UnsupportedParams(
            {"params.model": f"the local provider renders only model '{LOCAL_MODEL}'"}
        )
    if provider == "veo" and params.model not in prices:
        known = ", ".join(sorted(prices))
        raise UnsupportedParams({"params.model": f"unknown model; known models: {known}"})


def estimate_cost(spec: RenderSpec, prices: dict[str, Decimal]) -> Decimal:
    per_second = Decimal(0) if spec.model == LOCAL_MODEL else prices.get(spec.model, Decimal(0))
    return (per_second * spec.duration_seconds).quantize(Decimal("0.0001"))
