"""What the API itself says in the chat when a message is not a move on a generation.

Pure. The lifecycle messages (questions, the confirmation summary, "Generating video…", the
finished video, failures) are the notifier's; these are the rest: help, what is still needed,
and why a request cannot be made as asked. Never a silent drop.
"""

from __future__ import annotations

import re

from shared.domain.understanding import Awaiting, Context, extract, is_no, is_yes
from shared.schemas import Question

EXAMPLE = "“make a vertical 8 second video of a fox in snow”"
OPTIONS = (
    "You can ask for vertical (9:16) or landscape (16:9), 4, 6 or 8 seconds, 720p or 1080p, "
    "and with or without sound."
)
HELP = (
    "I make short videos from a description. Tell me what you'd like to see, for example "
    f"{EXAMPLE}. {OPTIONS}"
)
_GREETING = re.compile(
    r"^\s*(?:hi|hello|hey|hiya|howdy|good (?:morning|afternoon|evening))\b", re.I
)
_THANKS = re.compile(r"\b(?:thanks|thank you|thx|cheers)\b", re.I)


def _question(q: Question) -> str:
    if q.choices:
        return f"{q.text} ({', '.join(c.label for c in q.choices)})"
    return q.text


def _notes(notes: tuple[str, ...]) -> str:
    return (" " + " ".join(notes)) if notes else ""


def not_understood(text: str, context: Context, *, busy: bool, notes: tuple[str, ...]) -> str:
    """The reply to a message that neither asks for a video nor moves the current one."""
    match context.awaiting:
        case Awaiting.CONFIRMATION:
            reply = (
                "Shall I go ahead with the video above? "
                "Reply “yes” to start it, or “no” to cancel it."
            )
            if extract(text).named:
                reply += (
                    " To change its settings, reply “no” and ask again with what you'd like, "
                    f"for example {EXAMPLE}."
                )
            return reply + _notes(notes)
        case Awaiting.ANSWERS:
            asks = " ".join(_question(q) for q in context.questions)
            return f"Sorry, I didn't catch that.{_notes(notes)} {asks}".strip() + (
                " Or say “cancel” to drop this video."
            )
        case Awaiting.ANALYSIS:
            return "I'm still reading your request; I'll ask if I need anything else."
    if is_yes(text) or is_no(text):
        lead = "There's no video waiting for your go-ahead right now."
    elif busy:
        lead = "Your video is being made; I'll post it here as soon as it's ready."
    elif _THANKS.search(text):
        lead = "You're welcome!"
    elif _GREETING.match(text):
        lead = "Hi!"
    else:
        lead = "I'm not sure what you'd like me to make."
    return f"{lead}{_notes(notes)} {HELP}"


def request_notes(notes: tuple[str, ...]) -> str:
    """Said beside a new request that named something that cannot be made as asked."""
    return "Just so you know: " + " ".join(notes) + " I'll ask what you'd like instead."


def cannot_make(reasons: list[str]) -> str:
    said = "; ".join(r.rstrip(".") for r in reasons) or "a parameter cannot be honoured"
    return f"I can't make that video as asked: {said}. Please ask again without that. {OPTIONS}"
