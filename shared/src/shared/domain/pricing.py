"""Estimated cost from the per-model price table in settings."""

from __future__ import annotations

from decimal import Decimal

from shared.domain import veo_models
from shared.schemas import GenerationParams, RenderSpec

LOCAL_MODEL = "local"


class UnsupportedParams(ValueError):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def check_supported(
    params: GenerationParams,
    *,
    provider: str,
    prices: dict[str, Decimal],
    default_model: str | None = None,
) -> None:
    """Refuse at once what the configured provider cannot honour (never a late failure).

    `default_model` is the model used when the params name none (`Settings.default_model`);
    without it such params are checked only as far as they go without a model."""
    if provider == "local":
        errors: dict[str, str] = {}
        if params.model is not None and params.model != LOCAL_MODEL:
            errors["params.model"] = f"the local provider renders only model '{LOCAL_MODEL}'"
        if params.generate_audio:
            errors["params.generate_audio"] = "the local provider renders no audio"
        if errors:
            raise UnsupportedParams(errors)
        return
    model = params.model or default_model
    if model is None:
        return
    if provider == "veo" and model not in prices:
        known = ", ".join(sorted(prices))
        raise UnsupportedParams({"params.model": f"unknown model; known models: {known}"})
    capabilities = veo_models.MODELS.get(model)
    if capabilities is None:  # priced by the operator but not in our table: nothing known
        return
    errors = veo_models.problems(
        capabilities,
        resolution=params.resolution,
        duration_seconds=params.duration_seconds,
        generate_audio=params.generate_audio,
        seed=params.seed,
    )
    if errors:
        raise UnsupportedParams({k: f"{v} ({model})" for k, v in errors.items()})


def estimate_cost(spec: RenderSpec, prices: dict[str, Decimal]) -> Decimal:
    per_second = Decimal(0) if spec.model == LOCAL_MODEL else prices.get(spec.model, Decimal(0))
    return (per_second * spec.duration_seconds).quantize(Decimal("0.0001"))
