"""What the assistant says in the chat about each lifecycle event, in a person's words.

Pure: an event (and, when it finished, links to the video) in, a `Reply` or None out. Progress
and `processing` say nothing: "Generating video…" is said once, when the user's go-ahead lands
(`confirmed`), because a render may wait in the queue, or fail, before it ever starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from shared.messages import LifecycleEvent
from shared.schemas import ErrorInfo, Question
from shared.state_machine import Event

from notifier.payload import Links

GENERATING = "Generating video…"

_ORIENTATION = {"16:9": "landscape", "9:16": "vertical"}
_FAILURES = {
    "content_policy": (
        "I couldn't make this video: the video model declined the request under its content "
        "policy. You haven't been charged. Try describing the scene differently."
    ),
    "invalid_request": "I couldn't make this video because the request wasn't valid",
    "provider_unavailable": (
        "I couldn't make this video: the video service was unavailable and kept failing after "
        "several tries. Please try again in a few minutes."
    ),
    "timeout": (
        "I couldn't make this video: it took too long to generate and timed out. Please try again."
    ),
    "quota_exceeded": (
        "I couldn't make this video: the video service's usage limit has been reached. "
        "Please try again later."
    ),
    "internal": (
        "Something went wrong on our side while making your video, sorry. Please try again."
    ),
}
_PROMPT_PREVIEW = 280


@dataclass(frozen=True)
class Reply:
    content: str
    attachments: list[dict[str, Any]] = field(default_factory=list)


def compose(event: LifecycleEvent, links: Links | None = None) -> Reply | None:
    snap = event.snapshot
    match event.event:
        case Event.CLARIFICATION_REQUESTED:
            return Reply(ask(snap.questions))
        case Event.AWAITING_CONFIRMATION:
            return Reply(summary(event))
        case Event.CONFIRMED:
            return Reply(GENERATING)
        case Event.COMPLETED:
            return ready(event, links)
        case Event.FAILED:
            return Reply(failure(snap.error))
        case Event.CANCELLED:
            return Reply("Okay, I've cancelled this video. Nothing was generated.")
    return None  # processing, progress: the live views show those


def _choices(question: Question) -> str:
    if not question.choices:
        return ""
    return " Options: " + ", ".join(c.label for c in question.choices) + "."


def ask(questions: list[Question]) -> str:
    if not questions:
        return "Before I make your video, could you tell me a bit more about what you'd like?"
    if len(questions) == 1:
        only = questions[0]
        return f"Before I make your video, one question: {only.text}{_choices(only)}"
    lines = ["Before I make your video, I need a few details:"]
    lines += [f"{i}. {q.text}{_choices(q)}" for i, q in enumerate(questions, 1)]
    return "\n".join(lines)


def usd(amount: Decimal) -> str:
    cents = amount.quantize(Decimal("0.01"))
    if amount and not cents:  # a fraction of a cent: show it rather than "$0.00"
        return f"${amount.normalize():f}"
    return f"${cents:,.2f}"


def summary(event: LifecycleEvent) -> str:
    snap = event.snapshot
    spec, params = snap.spec, snap.params
    aspect = spec.aspect_ratio if spec else params.aspect_ratio
    duration = spec.duration_seconds if spec else params.duration_seconds
    resolution = spec.resolution if spec else params.resolution
    model = spec.model if spec else params.model
    prompt = snap.prompt if len(snap.prompt) <= _PROMPT_PREVIEW else snap.prompt[:279] + "…"
    lines = ["Here's what I'm about to make:", f"• Prompt: “{prompt}”"]
    if aspect:
        lines.append(f"• Aspect ratio: {aspect} ({_ORIENTATION.get(aspect, aspect)})")
    if duration:
        lines.append(f"• Duration: {duration} seconds")
    if resolution:
        lines.append(f"• Resolution: {resolution}")
    if model:
        lines.append(f"• Model: {model}")
    cost = snap.estimated_cost_usd
    if cost is not None:
        lines.append(
            f"Estimated cost: {usd(cost)}" + (" (rendered locally, free)." if not cost else ".")
        )
    lines.append("Shall I go ahead? Reply “yes” to start, or “no” to cancel.")
    return "\n".join(lines)


def ready(event: LifecycleEvent, links: Links | None) -> Reply:
    result = event.snapshot.result
    details = ""
    if result is not None:
        details = f" ({round(result.duration_seconds):d} seconds, {result.resolution})"
    attachments = []
    if links is not None:
        attachments.append(
            {"type": "video", "url": links.video_url, "thumbnail_url": links.thumbnail_url}
        )
    return Reply(f"Your video is ready{details}.", attachments)


def failure(error: ErrorInfo | None) -> str:
    if error is None:
        return _FAILURES["internal"]
    if error.code == "invalid_request":
        return f"{_FAILURES['invalid_request']}: {error.message.rstrip('.')}."
    return _FAILURES.get(error.code, _FAILURES["internal"])
