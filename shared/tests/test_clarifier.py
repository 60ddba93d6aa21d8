from __future__ import annotations

from decimal import Decimal

import pytest
from shared.domain.clarifier import InvalidAnswer, analyse, check_answers, questions_for
from shared.domain.pricing import UnsupportedParams, check_supported, estimate_cost
from shared.schemas import GenerationParams

PRICES = {"veo-3.1-fast-generate-preview": Decimal("0.15")}
DETAILED = "A red fox running through fresh snow at dawn, cinematic tracking shot"


def test_vague_prompt_without_params_gets_three_questions_with_choices() -> None:
    questions = questions_for("a fox", GenerationParams())
    assert [q.id for q in questions] == ["aspect_ratio", "duration_seconds", "detail"]
    assert [c.value for c in questions[0].choices or []] == ["16:9", "9:16"]
    assert [c.value for c in questions[1].choices or []] == ["4", "6", "8"]
    assert questions[2].choices is None


def test_complete_request_needs_no_question_and_keeps_the_prompt() -> None:
    params = GenerationParams(aspect_ratio="9:16", duration_seconds=6)
    analysis = analyse(DETAILED, params, {}, default_model="local")
    assert analysis.questions == []
    assert analysis.spec is not None
    assert analysis.spec.prompt == DETAILED
    assert (analysis.spec.aspect_ratio, analysis.spec.duration_seconds) == ("9:16", 6)
    assert analysis.spec.resolution == "720p"
    assert analysis.spec.frame_size == (720, 1280)


def test_answers_complete_the_spec_and_detail_is_appended_not_rewritten() -> None:
    questions = questions_for("a fox", GenerationParams())
    answers = check_answers(
        questions, {"aspect_ratio": "16:9", "duration_seconds": "8", "detail": "in the snow"}
    )
    spec = analyse("a fox", GenerationParams(), answers, default_model="m").spec
    assert spec is not None
    assert spec.prompt.startswith("a fox") and spec.prompt.endswith("in the snow")
    assert spec.duration_seconds == 8


def test_the_duration_question_offers_only_what_the_model_renders() -> None:
    """Veo 3.x renders 1080p only at 8 s: 8 s is filled in, not asked (a 4 s answer would fail
    late in the worker); Veo 2 renders 6 or 8 s of what we offer."""
    full_hd = GenerationParams(aspect_ratio="16:9", resolution="1080p")
    assert questions_for(DETAILED, full_hd, "veo-3.1-fast-generate-preview") == []
    spec = analyse(DETAILED, full_hd, {}, default_model="veo-3.1-fast-generate-preview").spec
    assert spec is not None and spec.duration_seconds == 8
    veo2 = questions_for(DETAILED, GenerationParams(aspect_ratio="16:9"), "veo-2.0-generate-001")
    assert [c.value for c in veo2[0].choices or []] == ["6", "8"]
    veo3_720 = questions_for(DETAILED, GenerationParams(), "veo-3.0-generate-001")
    assert [c.value for c in veo3_720[1].choices or []] == ["4", "6", "8"]


@pytest.mark.parametrize(
    ("answers", "bad"),
    [
        ({"aspect_ratio": "4:3", "duration_seconds": "8", "detail": "x"}, "aspect_ratio"),
        ({"aspect_ratio": "16:9", "duration_seconds": "5", "detail": "x"}, "duration_seconds"),
        ({"aspect_ratio": "16:9", "duration_seconds": "8"}, "detail"),
        ({"aspect_ratio": "16:9", "duration_seconds": "8", "detail": " "}, "detail"),
        ({"aspect_ratio": "16:9", "duration_seconds": "8", "detail": "x", "zzz": "1"}, "zzz"),
    ],
)
def test_bad_answers_are_named(answers: dict[str, str], bad: str) -> None:
    with pytest.raises(InvalidAnswer) as err:
        check_answers(questions_for("a fox", GenerationParams()), answers)
    assert bad in err.value.errors


def test_cost_is_price_times_seconds_and_local_is_free() -> None:
    spec = analyse(
        DETAILED,
        GenerationParams(aspect_ratio="16:9", duration_seconds=8),
        {},
        default_model="veo-3.1-fast-generate-preview",
    ).spec
    assert spec is not None
    assert estimate_cost(spec, PRICES) == Decimal("1.2000")
    local = spec.model_copy(update={"model": "local"})
    assert estimate_cost(local, PRICES) == Decimal(0)


def test_unsupported_model_is_refused_up_front() -> None:
    with pytest.raises(UnsupportedParams):
        check_supported(GenerationParams(model="veo-9"), provider="veo", prices=PRICES)
    with pytest.raises(UnsupportedParams):
        check_supported(
            GenerationParams(model="veo-3.1-fast-generate-preview"), provider="local", prices=PRICES
        )
    check_supported(GenerationParams(model="local"), provider="local", prices=PRICES)
