"""What each provider and Veo model cannot honour is refused at creation (`check_supported`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from shared.domain.pricing import UnsupportedParams, check_supported
from shared.schemas import GenerationParams
from shared.settings import DEFAULT_PRICE_PER_SECOND_USD

PRICES = dict(DEFAULT_PRICE_PER_SECOND_USD)
VEO_3 = "veo-3.1-fast-generate-preview"
VEO_2 = "veo-2.0-generate-001"
DURATION = "params.duration_seconds"


def refused(provider: str = "veo", default_model: str | None = None, **params: Any) -> set[str]:
    try:
        check_supported(
            GenerationParams(**params),
            provider=provider,
            prices=PRICES,
            default_model=default_model,
        )
    except UnsupportedParams as exc:
        return set(exc.errors)
    return set()


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"model": VEO_3, "resolution": "1080p", "duration_seconds": 8}, set()),
        ({"model": VEO_3, "resolution": "1080p", "duration_seconds": 6}, {DURATION}),
        ({"model": VEO_3, "resolution": "1080p"}, set()),  # the duration is asked later
        ({"model": VEO_3, "generate_audio": True, "seed": 5}, set()),
        ({"model": VEO_3, "generate_audio": False}, {"params.generate_audio"}),
        ({"model": "veo-3.0-generate-001", "generate_audio": False}, {"params.generate_audio"}),
        ({"model": VEO_2, "duration_seconds": 6, "generate_audio": False}, set()),
        ({"model": VEO_2, "duration_seconds": 4}, {DURATION}),
        ({"model": VEO_2, "resolution": "1080p"}, {"params.resolution"}),
        ({"model": VEO_2, "generate_audio": True}, {"params.generate_audio"}),
        ({"model": VEO_2, "seed": 1}, {"params.seed"}),
        ({"model": "veo-9"}, {"params.model"}),
    ],
)  # fmt: skip
def test_veo_models(params: dict[str, Any], fields: set[str]) -> None:
    assert refused(**params) == fields


def test_the_default_model_is_checked_when_the_params_name_none() -> None:
    assert refused(default_model=VEO_2, seed=3) == {"params.seed"}
    assert refused(default_model=VEO_3, seed=3) == set()
    assert refused(seed=3) == set()  # no model known: nothing to check against


def test_the_local_provider() -> None:
    assert refused("local", model="local") == set()
    assert refused("local", model=VEO_3) == {"params.model"}
    assert refused("local", generate_audio=True) == {"params.generate_audio"}
    assert refused("local", generate_audio=False, seed=9) == set()


def test_a_model_priced_by_the_operator_but_unknown_to_the_table_passes() -> None:
    prices = {**PRICES, "veo-4.0-preview": Decimal("0.5")}
    check_supported(
        GenerationParams(model="veo-4.0-preview", generate_audio=False),
        provider="veo",
        prices=prices,
    )
