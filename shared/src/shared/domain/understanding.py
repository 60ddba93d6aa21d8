"""Understanding a chat message: what the user wants, in the conversation's current state.

Pure and rule-based. `interpret(text, context)` says whether a message asks for a new video (and
which parameters it names), answers the open clarifying questions, confirms or cancels the video
awaiting the go-ahead, or is none of these. The chat reaches it through the small `Understander`
protocol, so a language-model understander can replace `RuleBasedUnderstander` later without
touching the chat.

The rules favour precision over recall: a word that may be scenery ("a tall giraffe", "a wide
river", "a portrait of a woman") sets a parameter only where it plainly talks about the video's
format ("tall video", "in portrait", "make it wide"), or when it answers a question about that
very parameter. Anything not understood is left to the clarifier to ask about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol

from shared.schemas import AspectRatio, GenerationParams, Question, Resolution

Duration = Literal[4, 6, 8]
DURATIONS: tuple[Duration, ...] = (4, 6, 8)


class Intent(StrEnum):
    REQUEST = "request"  # make a new video
    ANSWER = "answer"  # answers (some of) the open questions
    CONFIRM = "confirm"  # go ahead with the video awaiting confirmation
    CANCEL = "cancel"  # drop the video being discussed
    OTHER = "other"  # none of these: the chat answers with help


class Awaiting(StrEnum):
    """What the conversation's current generation waits for from the user."""

    NOTHING = "nothing"
    ANALYSIS = "analysis"  # just asked; the clarifier has not read it yet
    ANSWERS = "answers"
    CONFIRMATION = "confirmation"


@dataclass(frozen=True)
class Context:
    awaiting: Awaiting = Awaiting.NOTHING
    questions: tuple[Question, ...] = ()  # the questions still open (when awaiting answers)


@dataclass(frozen=True)
class Extracted:
    """Video parameters named in a text; `notes` says what was asked for but cannot be made."""

    aspect_ratio: AspectRatio | None = None
    duration_seconds: Duration | None = None
    resolution: Resolution | None = None
    generate_audio: bool | None = None
    notes: tuple[str, ...] = ()

    def params(self) -> GenerationParams:
        return GenerationParams(
            aspect_ratio=self.aspect_ratio,
            duration_seconds=self.duration_seconds,
            resolution=self.resolution,
            generate_audio=self.generate_audio,
        )

    @property
    def named(self) -> dict[str, str]:
        """The parameters found, as answer strings."""
        found = {
            "aspect_ratio": self.aspect_ratio,
            "duration_seconds": str(self.duration_seconds) if self.duration_seconds else None,
            "resolution": self.resolution,
            "generate_audio": None if self.generate_audio is None else str(self.generate_audio),
        }
        return {k: v for k, v in found.items() if v is not None}


@dataclass(frozen=True)
class Understanding:
    intent: Intent
    params: GenerationParams = field(default_factory=GenerationParams)  # for REQUEST
    answers: dict[str, str] = field(default_factory=dict)  # for ANSWER: question id -> value
    notes: tuple[str, ...] = ()


class Understander(Protocol):
    """What the chat needs from an understander (async: a model-backed one does I/O)."""

    async def understand(self, text: str, context: Context) -> Understanding: ...


class RuleBasedUnderstander:
    async def understand(self, text: str, context: Context) -> Understanding:
        return interpret(text, context)


# --- normalising -------------------------------------------------------------------------------

_EMOJI = {"👍": " yes ", "👌": " ok ", "✅": " yes ", "👎": " no ", "❌": " no ", "🛑": " stop "}
_QUOTES = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "–": "-", "—": "-"})


def normalise(text: str) -> str:
    out = text.translate(_QUOTES).lower()
    for emoji, word in _EMOJI.items():
        out = out.replace(emoji, word)
    return re.sub(r"\s+", " ", out).strip()


def _vocab(*words: str) -> frozenset[str]:
    return frozenset(" ".join(words).split())


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text)


_NEGATION = r"(?:not|no|never|don't|dont|do not|without|instead of|rather than)"


def _negated(text: str, start: int) -> bool:
    """A negation right before position `start` ("not vertical", "rather than landscape")."""
    before = text[max(0, start - 20) : start]
    return re.search(rf"\b{_NEGATION}\s+(?:in\s+|a\s+|an\s+)?$", before) is not None


# --- parameters --------------------------------------------------------------------------------

_FORMAT_NOUN = (
    r"(?:videos?|clips?|films?|movies?|format|mode|orientation|aspect(?: ratio)?|ratio|frame|"
    r"version|shorts?|reels?|one)"
)
# Words that always name a format (unless they plainly describe scenery: "vertical cliffs",
# "a landscape of hills"), and words that do only in a format phrase ("in portrait", "make it
# tall", "a wide video") or in an answer to the format question.
_STRONG = {
    "9:16": r"9\s*[:x/]\s*16|9 by 16|vertical(?:ly)?|phone[- ](?:format|sized?|screen)|"
    r"for (?:tiktok|instagram|reels|stories|(?:youtube )?shorts)",
    "16:9": r"16\s*[:x/]\s*9|16 by 9|landscape|horizontal(?:ly)?|widescreen|wide-screen|"
    r"for (?:youtube|tv|television|a tv|desktop)",
}
_WEAK = {"9:16": r"portrait|tall|upright", "16:9": r"wide"}
_SCENERY_AFTER = re.compile(
    r"\s+(?:of|painting|photo|picture|cliffs?|walls?|lines?|stripes?|drop|shot|angle|lens)\b"
)
_FORMAT_LEAD = r"(?:in|as|make it|it's|its|should be|be|go|went|keep it)\s+(?:a\s+)?"


def _aspect(text: str, loose: bool) -> AspectRatio | None:
    votes: set[str] = set()
    for ratio in ("9:16", "16:9"):
        strong = rf"\b(?:{_STRONG[ratio]})\b"
        weak = rf"\b(?:{_WEAK[ratio]})\b"
        if not loose:
            weak = rf"\b{_FORMAT_LEAD}(?:{_WEAK[ratio]})\b|\b(?:{_WEAK[ratio]})\s+{_FORMAT_NOUN}\b"
        for pattern in (strong, weak):
            for m in re.finditer(pattern, text):
                bare_word = m.group(0).isalpha()  # not a ratio, not a format phrase
                if bare_word and _SCENERY_AFTER.match(text, m.end()):
                    continue
                votes.add(_flip(ratio) if _negated(text, m.start()) else ratio)
    if len(votes) == 1:
        return "9:16" if votes == {"9:16"} else "16:9"
    return None


def _flip(ratio: str) -> str:
    return "16:9" if ratio == "9:16" else "9:16"


_NUMBERS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30,
    "sixty": 60, "a": 1, "an": 1,
}  # fmt: skip
_NUMBER = r"\d{1,3}(?:\.\d+)?|" + "|".join(k for k in _NUMBERS if len(k) > 2)
_SECONDS = re.compile(
    rf"\b(?P<n>{_NUMBER})(?P<sep>\s*-?\s*)(?P<u>seconds?|secs?|s)\b(?!\s*(?:style|era|vibe|music|look)\b)"
)
_MINUTES = re.compile(rf"\b(?P<n>{_NUMBER}|a|an|half an?)\s*-?\s*(?:minutes?|mins?|hours?)\b")
# "every 2 seconds", "after 3 seconds": timing inside the scene, not the video's length.
_TIMING = re.compile(r"\b(?:every|each|after|per|within|first|last|for the first|for the last)\s*$")
_BARE_DURATION = re.compile(r"^\s*(?:just\s+)?(4|6|8|four|six|eight)\s*(?:please|pls)?\s*[.!]*\s*$")


def _number(token: str) -> float | None:
    if token in _NUMBERS:
        return float(_NUMBERS[token])
    try:
        return float(token)
    except ValueError:
        return None


def _duration(text: str) -> tuple[Duration | None, tuple[str, ...]]:
    found: set[int] = set()
    notes: list[str] = []
    for m in _SECONDS.finditer(text):
        if _TIMING.search(text[: m.start()]) or _negated(text, m.start()):
            continue
        value = _number(m.group("n"))
        if value is None:
            continue
        if m.group("u") == "s" and (value > 20 or not m.group("n").isdigit()):
            continue  # "the 80s": a decade, not a length
        if value in DURATIONS:
            found.add(int(value))
        else:
            notes.append(_LENGTH_NOTE)
    for m in _MINUTES.finditer(text):
        if not _TIMING.search(text[: m.start()]):
            notes.append(_LENGTH_NOTE)
    if len(found) == 1:
        only = found.pop()
        return (4 if only == 4 else 6 if only == 6 else 8), ()
    return None, tuple(dict.fromkeys(notes))


_LENGTH_NOTE = "Videos can be 4, 6 or 8 seconds long."
_RES_NOTE = "I can make 720p or 1080p videos."
_P1080 = r"1080\s*p?|full[\s-]*hd|fhd|1920\s*x\s*1080|1080\s*x\s*1920"
_P720 = r"720\s*p?|1280\s*x\s*720|720\s*x\s*1280|(?<!full )(?<!full-)(?<!ultra )(?<!ultra-)hd"
_UNSUPPORTED_RES = re.compile(r"\b(?:4k|2160\s*p?|8k|uhd|ultra[\s-]*hd|480\s*p|360\s*p|1440\s*p)\b")


def _resolution(text: str) -> tuple[Resolution | None, tuple[str, ...]]:
    votes: set[str] = set()
    for res, words in (("1080p", _P1080), ("720p", _P720)):
        for m in re.finditer(rf"\b(?:{words})\b(?!\s*(?:frames?|fps|steps?|degrees?|ms)\b)", text):
            if _negated(text, m.start()):
                if res == "1080p" or m.group(0).startswith("720"):
                    votes.add("720p" if res == "1080p" else "1080p")
                continue
            votes.add(res)
    notes = (_RES_NOTE,) if _UNSUPPORTED_RES.search(text) else ()
    if len(votes) == 1:
        return ("1080p" if votes == {"1080p"} else "720p"), ()
    return None, notes


_SOUND = r"(?:sound|audio|music|sound effects|sfx|dialogue|voice-?over|narration|soundtrack)"
_SOUND_ADJECTIVE = (
    r"(?:(?:some|an?|the|ambient|background|loud|soft|epic|calm|natural|realistic|nice|"
    r"original|synced|matching)\s+)"
)
_WITH_SOUND = re.compile(
    rf"\b(?:with|add|adding|include|including|plus)\s+{_SOUND_ADJECTIVE}{{0,2}}{_SOUND}\b"
    rf"|\b(?:sound|audio)\s+on\b|\bnot\s+(?:silent|muted)\b"
)
_NO_SOUND = re.compile(
    rf"\b(?:no|without|w/o|minus|zero)\s+(?:any\s+)?{_SOUND}\b|\b(?:sound|audio)\s+off\b"
    rf"|\b(?:muted?|silent)\s+(?:videos?|clips?|version)\b|\bon mute\b"
    rf"|\b(?:muted|mute it|silent please)\b"
    rf"|\b(?:don't|dont|do not)\s+(?:add|include|want|need)\s+(?:any\s+)?{_SOUND}\b"
)


def _audio(text: str) -> bool | None:
    without = _NO_SOUND.search(text) is not None
    with_ = any(not _negated(text, m.start()) for m in _WITH_SOUND.finditer(text))
    if with_ and not without:
        return True
    if without and not with_:
        return False
    if without and with_:
        # "with no sound" matched both readings through "with": the explicit "no" wins.
        return False if re.search(rf"\bwith\s+no\s+{_SOUND}", text) else None
    return None


def extract(text: str, *, loose: bool = False) -> Extracted:
    """Parameters named in `text`. `loose` reads bare format words ("wide", "tall") too: right
    when the text answers a question about the format, wrong in a scene description."""
    norm = normalise(text)
    duration, duration_notes = _duration(norm)
    resolution, resolution_notes = _resolution(norm)
    return Extracted(
        aspect_ratio=_aspect(norm, loose),
        duration_seconds=duration,
        resolution=resolution,
        generate_audio=_audio(norm),
        notes=duration_notes + resolution_notes,
    )


# --- yes, no -----------------------------------------------------------------------------------

_YES_ANCHOR = re.compile(
    r"\b(?:yes|yeah|yea|yep|yup|ya|yah|sure|ok|okay|k|kk|confirm|confirmed|proceed|absolutely|"
    r"definitely|perfect|alright|lgtm|y|go ahead|do it|sounds good|looks good|sounds great|"
    r"looks great|let's go|lets go|let's do it|go for it|make it|ship it|start it|start|"
    r"generate it|render it|i confirm|of course|please do|yes please)\b"
)
_YES_WORDS = _vocab(
    "yes yeah yea yep yup ya yah sure ok okay k kk confirm confirmed proceed absolutely "
    "definitely perfect alright lgtm y go ahead do it sounds looks good great let's lets for "
    "make ship start generate render i of course please plz pls thanks thank you now right away "
    "that this one the video just fine cool awesome nice ready all set then and so it's its "
    "is am i'm we're totally exactly correct right on"
)
_NO_ANCHOR = re.compile(
    r"\b(?:no|nope|nah|cancel|cancelled|canceled|stop|abort|never ?mind|nvm|forget it|"
    r"forget about it|scrap (?:it|that)|don't|dont|do not|changed my mind|n)\b"
)
_NO_WORDS = _vocab(
    "no nope nah n cancel cancelled canceled stop abort never mind nevermind nvm forget about "
    "scrap don't dont do not changed my mind it that this the video one generation please pls "
    "thanks thank you i i've just actually anymore after all for now oh sorry ok okay want need "
    "make bother so then that's wait"
)
_NOT_CANCEL = re.compile(r"\b(?:don't|dont|do not|never)\s+(?:cancel|stop|abort)\b")


def is_yes(text: str) -> bool:
    norm = normalise(text)
    words = _words(norm)
    if not words or len(words) > 12 or "?" in norm:
        return False
    if _NO_ANCHOR.search(norm) or re.search(r"\b(?:not|wait|later|hold|hmm+|maybe)\b", norm):
        return False
    return _YES_ANCHOR.search(norm) is not None and all(w in _YES_WORDS for w in words)


def is_no(text: str) -> bool:
    norm = normalise(text)
    words = _words(norm)
    if not words or len(words) > 12 or _NOT_CANCEL.search(norm):
        return False
    return _NO_ANCHOR.search(norm) is not None and all(w in _NO_WORDS for w in words)


# --- asking for a video ------------------------------------------------------------------------

_NOUN = (
    r"(?:videos?|clips?|films?|movies?|animations?|footage|reels?|time-?lapses?|gifs?|"
    r"trailers?|teasers?|commercials?|ads?|shorts?)"
)
_VERB = (
    r"(?:make|making|create|creating|generate|generating|render|produce|film|shoot|animate|do|"
    r"give|show|want|need|like|love|design|craft|get|whip up|put together|turn)"
)
_OBJECT_NOUN = r"(?:videos?|clips?|films?|movies?|animations?|footage|scenes?|shots?|time-?lapses?)"
_WH = re.compile(
    r"^(?:how|what|what's|whats|why|when|where|which|who|do you|does|is it|is this|are you|"
    r"did you|have you|will it|would it|should i)\b"
)
_PRONOUNS = _vocab("i you me my your we us our it he she they i'm you're")
_STOP = _vocab(
    "the and with for from into onto that this then than there their them its it's a an of in "
    "on at to by as is are be was were please pls thanks thank you can could would will just "
    "some any make create generate render produce video videos clip show give want need like "
    "one very really also but not now okay yes yeah sure maybe hmm idk whatever dunno know "
    "think guess anything something stuff thing don't dont i'm no what how why who mean ok "
    "seconds second secs sec long short format vertical horizontal landscape portrait wide tall "
    "sound audio music silent muted"
)


def content_words(text: str) -> list[str]:
    """Words that say something about a scene (not fillers, not parameter words)."""
    return [w for w in _words(text) if len(w) >= 3 and w not in _STOP and not w.isdigit()]


def asks_for_video(text: str, *, descriptive: bool = True) -> bool:
    """An explicit request ("make a video of …", "animate a …", "a clip of …") that is not
    negated and not a question about what is possible; with `descriptive`, also a bare scene
    description ("a cat surfing a wave at sunset")."""
    norm = normalise(text)
    if not norm or _WH.match(norm):
        return False
    cue = _cue(norm)
    if cue is not None:
        start, end = cue
        if re.search(rf"\b{_NEGATION}\b", norm[:start]) or re.search(
            r"\b(?:not|never)\b", norm[start:end]
        ):
            return False
        # "can you make videos?": a question about us, not a request.
        return not (norm.endswith("?") and not content_words(_strip_params(norm[end:])))
    if not descriptive or "?" in norm or re.search(rf"\b{_NOUN}\b", norm):
        return False
    words = _words(norm)
    return (
        bool(re.match(r"^(?:a|an|two|three|four|five|some|several|the|close-?up of)\b", norm))
        and not any(w in _PRONOUNS for w in words)
        and not re.search(rf"\b{_NEGATION}\b", norm)
        and len(content_words(norm)) >= 3
    )


def _cue(norm: str) -> tuple[int, int] | None:
    """Where the request is said: (start, end) of the cue, or None."""
    patterns = (
        rf"\b{_VERB}\b(?:\s+[\w'-]+){{0,7}}?\s+{_NOUN}\b",  # make (me) a (short vertical) video
        rf"\b{_OBJECT_NOUN}\s+(?:of|about|showing|where|with|in which|featuring|that shows)\b",
        r"^(?:please\s+)?(?:can you\s+|could you\s+)?(?:animate|film)\b",
        rf"^{_NOUN}\s*:",
    )
    found = [m for p in patterns if (m := re.search(p, norm))]
    if not found:
        return None
    first = min(found, key=lambda m: m.start())
    return first.start(), first.end()


def _strip_params(text: str) -> str:
    """The text without the phrases that name parameters (what is left describes the scene)."""
    out = text
    for pattern in (
        _SECONDS.pattern,
        _MINUTES.pattern,
        rf"\b(?:{_P1080}|{_P720})\b",
        _UNSUPPORTED_RES.pattern,
        _WITH_SOUND.pattern,
        _NO_SOUND.pattern,
        *(rf"\b(?:{w})\b" for w in (*_STRONG.values(), *_WEAK.values())),
    ):
        out = re.sub(pattern, " ", out)
    return out


# --- answers -----------------------------------------------------------------------------------

_HEDGES = _vocab(
    "hmm hmmm umm idk dunno whatever anything nothing sure unsure know think guess mind maybe "
    "yes yeah yep nope okay fine good great cool nice thanks hello hey hiya"
)


def _free_text(text: str) -> bool:
    """Text that can answer a free-text question: describes something, is not a question."""
    norm = normalise(text)
    if "?" in norm or is_yes(norm) or is_no(norm):
        return False
    return any(w not in _HEDGES for w in content_words(_strip_params(norm)))


def _choice(question: Question, norm: str) -> str | None:
    """The choice whose value or label the whole text is ("Vertical 9:16", "8")."""
    bare = norm.strip(" .!")
    for choice in question.choices or ():
        if bare in (choice.value.lower(), choice.label.lower()):
            return choice.value
    return None


def answers_for(text: str, questions: tuple[Question, ...] | list[Question]) -> dict[str, str]:
    """Answers to the open questions found in `text` (possibly only some of them)."""
    norm = normalise(text)
    found = extract(norm, loose=True)
    named = found.named
    answers: dict[str, str] = {}
    for q in questions:
        value = _choice(q, norm) if q.choices else None
        if value is None and q.id in named:
            value = named[q.id]
        if value is None and q.id == "duration_seconds":
            bare = _BARE_DURATION.match(norm)
            if bare:
                value = str(int(_number(bare.group(1)) or 0))
        if value is None and not q.choices and _free_text(text):
            value = text.strip()  # a free-text question takes the text as written
        if value is not None and q.choices and value not in {c.value for c in q.choices}:
            value = None  # named, but not one of the offered choices (e.g. audio on a 4-choice)
        if value is not None:
            answers[q.id] = value
    return answers


# --- the decision ------------------------------------------------------------------------------


def interpret(text: str, context: Context) -> Understanding:
    norm = normalise(text)
    awaiting = context.awaiting
    if awaiting == Awaiting.CONFIRMATION:
        if is_yes(norm):
            return Understanding(Intent.CONFIRM)
        if is_no(norm):
            return Understanding(Intent.CANCEL)
    elif awaiting in (Awaiting.ANSWERS, Awaiting.ANALYSIS) and is_no(norm):
        return Understanding(Intent.CANCEL)

    if awaiting == Awaiting.ANSWERS:
        detail_open = any(not q.choices for q in context.questions)
        if not detail_open and asks_for_video(norm, descriptive=False):
            return _request(norm)
        answers = answers_for(text, context.questions)
        if answers:
            return Understanding(Intent.ANSWER, answers=answers, notes=extract(norm).notes)
        return Understanding(Intent.OTHER, notes=extract(norm, loose=True).notes)

    if asks_for_video(norm, descriptive=awaiting == Awaiting.NOTHING):
        return _request(norm)
    return Understanding(Intent.OTHER, notes=extract(norm).notes)


def _request(norm: str) -> Understanding:
    found = extract(norm)
    return Understanding(Intent.REQUEST, params=found.params(), notes=found.notes)
