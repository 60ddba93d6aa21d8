"""The rule-based clarifier: what a Veo request needs that the user did not say.

Pure: given the prompt, the requested params and any answers, it returns either the questions
still open or the complete `RenderSpec`. The user's prompt is never rewritten; a free-text detail
answer is appended to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.domain import veo_models
from shared.schemas import Choice, GenerationParams, Question, RenderSpec

ASPECT = Question(
    id="aspect_ratio",
    text="Should the video be landscape (16:9) or vertical (9:16)?",
    choices=[
        Choice(value="16:9", label="Landscape 16:9"),
        Choice(value="9:16", label="Vertical 9:16"),
    ],
)
DURATION = Question(
    id="duration_seconds",
    text="How long should it be?",
    choices=[
        Choice(value="4", label="4 seconds"),
        Choice(value="6", label="6 seconds"),
        Choice(value="8", label="8 seconds"),
    ],
)
DETAIL = Question(
    id="detail",
    text="Could you describe it in a bit more detail: the subject, the setting and the style?",
)
QUESTIONS = {q.id: q for q in (ASPECT, DURATION, DETAIL)}

MIN_DETAIL_WORDS = 4
MAX_DETAIL_CHARS = 1000
_WORD = re.compile(r"[^\W\d_]{2,}", re.UNICODE)


def is_vague(prompt: str) -> bool:
    """Too few real words for a model to know what to show."""
    return len(_WORD.findall(prompt)) < MIN_DETAIL_WORDS


@dataclass(frozen=True)
class Analysis:
    questions: list[Question]
    spec: RenderSpec | None


class InvalidAnswer(ValueError):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _durations(params: GenerationParams, model: str | None) -> tuple[int, ...] | None:
    """The durations the model can render with these params (1080p on Veo 3.x: only 8 s), so
    the question never offers a choice that would fail later in the worker."""
    if model is None:
        return None
    return veo_models.durations_for(model, params.resolution)


def _duration_question(durations: tuple[int, ...] | None) -> Question:
    if durations is None:
        return DURATION
    offered = {str(d) for d in durations}
    return DURATION.model_copy(
        update={"choices": [c for c in DURATION.choices or [] if c.value in offered]}
    )


def questions_for(
    prompt: str, params: GenerationParams, model: str | None = None
) -> list[Question]:
    """The open questions; with `model`, the duration is asked only when the model leaves a
    choice (one possible duration is filled in, not asked)."""
    asked = []
    if params.aspect_ratio is None:
        asked.append(ASPECT)
    durations = _durations(params, model)
    if params.duration_seconds is None and (durations is None or len(durations) > 1):
        asked.append(_duration_question(durations))
    if is_vague(prompt):
        asked.append(DETAIL)
    return asked


def check_answers(questions: list[Question], answers: dict[str, str]) -> dict[str, str]:
    """Validate answers against the open questions; the normalised answers or `InvalidAnswer`."""
    open_ids = {q.id: q for q in questions}
    errors: dict[str, str] = {}
    clean: dict[str, str] = {}
    for qid, value in answers.items():
        question = open_ids.get(qid)
        if question is None:
            errors[qid] = "no such open question"
            continue
        text = str(value).strip()
        if question.choices is not None and text not in {c.value for c in question.choices}:
            allowed = ", ".join(c.value for c in question.choices)
            errors[qid] = f"must be one of {allowed}"
        elif not text or len(text) > MAX_DETAIL_CHARS:
            errors[qid] = f"must be 1-{MAX_DETAIL_CHARS} characters"
        else:
            clean[qid] = text
    for qid in open_ids:
        if qid not in answers:
            errors[qid] = "not answered"
    if errors:
        raise InvalidAnswer(errors)
    return clean


def analyse(
    prompt: str, params: GenerationParams, answers: dict[str, str], *, default_model: str
) -> Analysis:
    """Open questions, or the final spec once everything needed is known."""
    model = params.model or default_model
    open_questions = [q for q in questions_for(prompt, params, model) if q.id not in answers]
    if open_questions:
        return Analysis(open_questions, None)
    detail = answers.get("detail")
    durations = _durations(params, model)
    only = durations[0] if durations is not None and len(durations) == 1 else None
    spec = RenderSpec(
        model=model,
        prompt=f"{prompt.rstrip()}. {detail}" if detail else prompt,
        aspect_ratio=params.aspect_ratio or answers["aspect_ratio"],
        resolution=params.resolution or "720p",
        duration_seconds=params.duration_seconds or only or int(answers["duration_seconds"]),
        negative_prompt=params.negative_prompt,
        generate_audio=(
            params.generate_audio
            if params.generate_audio is not None
            else model.startswith("veo-3")
        ),
        seed=params.seed,
    )
    return Analysis([], spec)
