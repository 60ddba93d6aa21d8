"""The understanding rules over a table of real phrasings, including ones that must NOT match."""

from __future__ import annotations

from typing import Any

import pytest
from shared.domain import clarifier
from shared.domain.understanding import (
    Awaiting,
    Context,
    Intent,
    RuleBasedUnderstander,
    Understander,
    Understanding,
    asks_for_video,
    extract,
    interpret,
    is_no,
    is_yes,
)

NOTHING = Context()
ALL_OPEN = Context(
    Awaiting.ANSWERS, (clarifier.ASPECT, clarifier.DURATION, clarifier.DETAIL)
)  # a vague request: every question asked
FORMAT_OPEN = Context(Awaiting.ANSWERS, (clarifier.ASPECT, clarifier.DURATION))
DETAIL_OPEN = Context(Awaiting.ANSWERS, (clarifier.DETAIL,))
CONFIRMING = Context(Awaiting.CONFIRMATION)
ANALYSING = Context(Awaiting.ANALYSIS)

# (text, context, intent, expected params (REQUEST) or answers (ANSWER))
TABLE: list[tuple[str, Context, Intent, dict[str, Any]]] = [
    # --- asking for a video, with the parameters it names -----------------------------------
    (
        "make a vertical 8 second video of a fox in snow",
        NOTHING,
        Intent.REQUEST,
        {"aspect_ratio": "9:16", "duration_seconds": 8},
    ),
    ("Create a video of a lighthouse in a storm", NOTHING, Intent.REQUEST, {}),
    (
        "generate a 6s landscape clip of waves crashing, 1080p, with sound",
        NOTHING,
        Intent.REQUEST,
        {
            "aspect_ratio": "16:9",
            "duration_seconds": 6,
            "resolution": "1080p",
            "generate_audio": True,
        },
    ),
    (
        "can you make me a portrait video of a dancer, eight seconds, no audio?",
        NOTHING,
        Intent.REQUEST,
        {"aspect_ratio": "9:16", "duration_seconds": 8, "generate_audio": False},
    ),
    (
        "I'd like a 4 sec 9:16 clip of a coffee cup steaming, full hd",
        NOTHING,
        Intent.REQUEST,
        {"aspect_ratio": "9:16", "duration_seconds": 4, "resolution": "1080p"},
    ),
    (
        "Please render a horizontal video in HD of a city at night",
        NOTHING,
        Intent.REQUEST,
        {"aspect_ratio": "16:9", "resolution": "720p"},
    ),
    ("animate a paper boat drifting down a rainy street", NOTHING, Intent.REQUEST, {}),
    (
        "video of a hummingbird in slow motion, 16:9",
        NOTHING,
        Intent.REQUEST,
        {"aspect_ratio": "16:9"},
    ),
    (
        "make a tall video of a waterfall for tiktok, 720p, muted",
        NOTHING,
        Intent.REQUEST,
        {"aspect_ratio": "9:16", "resolution": "720p", "generate_audio": False},
    ),
    (
        "a cat surfing a huge wave at sunset, cinematic",
        NOTHING,
        Intent.REQUEST,
        {},
    ),  # a bare scene description is a request too
    ("make a video", NOTHING, Intent.REQUEST, {}),  # vague: the clarifier asks for details
    # Scenery words are not parameters outside a format phrase.
    ("make a video of a tall giraffe walking across a wide river", NOTHING, Intent.REQUEST, {}),
    ("create a clip of a portrait of a woman being painted", NOTHING, Intent.REQUEST, {}),
    ("make a video of a fox that blinks every 2 seconds", NOTHING, Intent.REQUEST, {}),
    (
        "film a 1980s style car chase, not vertical",
        NOTHING,
        Intent.REQUEST,
        {"aspect_ratio": "16:9"},
    ),
    ("make a 10 second video of rain", NOTHING, Intent.REQUEST, {}),  # 10 s: not offered
    ("make a 4k video of the ocean", NOTHING, Intent.REQUEST, {}),  # 4k: not offered
    (
        "make a video of a forest, not in landscape",
        NOTHING,
        Intent.REQUEST,
        {"aspect_ratio": "9:16"},
    ),
    # --- must NOT start a video ---------------------------------------------------------------
    ("hello", NOTHING, Intent.OTHER, {}),
    ("thanks!", NOTHING, Intent.OTHER, {}),
    ("what can you do?", NOTHING, Intent.OTHER, {}),
    ("can you make videos?", NOTHING, Intent.OTHER, {}),
    ("how do I make a video?", NOTHING, Intent.OTHER, {}),
    ("I don't want a video", NOTHING, Intent.OTHER, {}),
    ("don't make a video yet", NOTHING, Intent.OTHER, {}),
    ("no video please, just chatting", NOTHING, Intent.OTHER, {}),
    ("how much does a video cost?", NOTHING, Intent.OTHER, {}),
    ("the video is too slow", NOTHING, Intent.OTHER, {}),
    ("yes", NOTHING, Intent.OTHER, {}),  # nothing awaits a go-ahead
    ("vertical", NOTHING, Intent.OTHER, {}),
    # --- answering the open questions ---------------------------------------------------------
    (
        "vertical, 8 seconds",
        FORMAT_OPEN,
        Intent.ANSWER,
        {"aspect_ratio": "9:16", "duration_seconds": "8"},
    ),
    ("Vertical 9:16", FORMAT_OPEN, Intent.ANSWER, {"aspect_ratio": "9:16"}),  # a choice's label
    ("8 seconds", FORMAT_OPEN, Intent.ANSWER, {"duration_seconds": "8"}),
    ("eight seconds please", FORMAT_OPEN, Intent.ANSWER, {"duration_seconds": "8"}),
    ("8s", FORMAT_OPEN, Intent.ANSWER, {"duration_seconds": "8"}),
    ("8 sec", FORMAT_OPEN, Intent.ANSWER, {"duration_seconds": "8"}),
    ("6", FORMAT_OPEN, Intent.ANSWER, {"duration_seconds": "6"}),
    ("tall", FORMAT_OPEN, Intent.ANSWER, {"aspect_ratio": "9:16"}),
    (
        "wide, 4 seconds",
        FORMAT_OPEN,
        Intent.ANSWER,
        {"aspect_ratio": "16:9", "duration_seconds": "4"},
    ),
    ("portrait", FORMAT_OPEN, Intent.ANSWER, {"aspect_ratio": "9:16"}),
    ("horizontal", FORMAT_OPEN, Intent.ANSWER, {"aspect_ratio": "16:9"}),
    ("not vertical", FORMAT_OPEN, Intent.ANSWER, {"aspect_ratio": "16:9"}),
    ("landscape, not portrait", FORMAT_OPEN, Intent.ANSWER, {"aspect_ratio": "16:9"}),
    (
        "landscape, 6 seconds, and it should be a fox jumping into deep snow at dawn",
        ALL_OPEN,
        Intent.ANSWER,
        {
            "aspect_ratio": "16:9",
            "duration_seconds": "6",
            "detail": "landscape, 6 seconds, and it should be a fox jumping into deep snow at dawn",
        },
    ),
    (
        "a red fox hunting mice under the snow, golden light",
        DETAIL_OPEN,
        Intent.ANSWER,
        {"detail": "a red fox hunting mice under the snow, golden light"},
    ),
    (
        "vertical, 8 seconds",
        ALL_OPEN,
        Intent.ANSWER,
        {"aspect_ratio": "9:16", "duration_seconds": "8"},
    ),
    # must NOT answer
    ("10 seconds", FORMAT_OPEN, Intent.OTHER, {}),  # not one of 4/6/8
    ("hmm, not sure", FORMAT_OPEN, Intent.OTHER, {}),
    ("yes", FORMAT_OPEN, Intent.OTHER, {}),
    ("whatever you think", DETAIL_OPEN, Intent.OTHER, {}),
    ("what do you mean?", DETAIL_OPEN, Intent.OTHER, {}),
    ("cancel", FORMAT_OPEN, Intent.CANCEL, {}),
    ("never mind", ALL_OPEN, Intent.CANCEL, {}),
    ("actually, make a video of a whale instead", FORMAT_OPEN, Intent.REQUEST, {}),
    # --- confirming or cancelling -----------------------------------------------------------
    ("yes", CONFIRMING, Intent.CONFIRM, {}),
    ("Yes please!", CONFIRMING, Intent.CONFIRM, {}),
    ("go ahead", CONFIRMING, Intent.CONFIRM, {}),
    ("do it", CONFIRMING, Intent.CONFIRM, {}),
    ("ok, sounds good", CONFIRMING, Intent.CONFIRM, {}),
    ("yep 👍", CONFIRMING, Intent.CONFIRM, {}),
    ("sure, go for it", CONFIRMING, Intent.CONFIRM, {}),
    ("no", CONFIRMING, Intent.CANCEL, {}),
    ("cancel", CONFIRMING, Intent.CANCEL, {}),
    ("stop", CONFIRMING, Intent.CANCEL, {}),
    ("no thanks, forget it", CONFIRMING, Intent.CANCEL, {}),
    ("don't do it", CONFIRMING, Intent.CANCEL, {}),
    ("I changed my mind", CONFIRMING, Intent.CANCEL, {}),
    # must NOT confirm or cancel
    ("not yet", CONFIRMING, Intent.OTHER, {}),
    ("no, go ahead", CONFIRMING, Intent.OTHER, {}),  # contradictory: ask again
    ("don't cancel it", CONFIRMING, Intent.OTHER, {}),
    ("yes but make it vertical", CONFIRMING, Intent.OTHER, {}),
    ("do it later", CONFIRMING, Intent.OTHER, {}),
    ("is it going to cost much?", CONFIRMING, Intent.OTHER, {}),
    ("stop motion style would be nice", CONFIRMING, Intent.OTHER, {}),
    ("yes", ANALYSING, Intent.OTHER, {}),
    ("cancel it", ANALYSING, Intent.CANCEL, {}),
]


@pytest.mark.parametrize(
    ("text", "context", "intent", "expected"), TABLE, ids=[r[0] for r in TABLE]
)
def test_table(text: str, context: Context, intent: Intent, expected: dict[str, Any]) -> None:
    got = interpret(text, context)
    assert got.intent == intent, got
    if intent == Intent.REQUEST:
        assert got.params.model_dump(exclude_none=True) == expected
    elif intent == Intent.ANSWER:
        assert got.answers == expected
    else:
        assert not expected


def test_the_table_is_big_and_has_negatives() -> None:
    assert len(TABLE) >= 40
    negatives = [r for r in TABLE if r[2] == Intent.OTHER]
    assert len(negatives) >= 15


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("9:16", "aspect_ratio", "9:16"),
        ("16:9", "aspect_ratio", "16:9"),
        ("in portrait mode", "aspect_ratio", "9:16"),
        ("a wide video", "aspect_ratio", "16:9"),
        ("widescreen", "aspect_ratio", "16:9"),
        ("eight seconds", "duration_seconds", 8),
        ("an 8-second clip", "duration_seconds", 8),
        ("four secs", "duration_seconds", 4),
        ("1080", "resolution", "1080p"),
        ("in full HD", "resolution", "1080p"),
        ("720p", "resolution", "720p"),
        ("hd", "resolution", "720p"),
        ("not 1080p", "resolution", "720p"),
        ("with sound", "generate_audio", True),
        ("with music", "generate_audio", True),
        ("no audio", "generate_audio", False),
        ("without sound", "generate_audio", False),
        ("with no sound", "generate_audio", False),
        ("don't add any music", "generate_audio", False),
        ("sound off", "generate_audio", False),
    ],
)
def test_parameter_phrasings(text: str, field: str, value: object) -> None:
    assert getattr(extract(text), field) == value


@pytest.mark.parametrize(
    "text",
    [
        "a silent forest at night",  # scenery, not audio
        "the 80s",  # a decade, not 80 seconds
        "a wide river under tall trees",  # scenery, not format
        "a landscape of rolling hills",
        "vertical cliffs above the sea",
        "ultra hd",  # not 720p; not offered at all
        "1080 frames of snow",
        "every 4 seconds a bell rings",
        "a singer with a beautiful voice",
        "a portrait of an old sailor",
    ],
)
def test_scenery_sets_no_parameter(text: str) -> None:
    assert extract(text).params().model_dump(exclude_none=True) == {}


def test_unsupported_requests_get_a_note() -> None:
    assert extract("a 10 second video").notes == ("Videos can be 4, 6 or 8 seconds long.",)
    assert extract("a one minute video").notes == ("Videos can be 4, 6 or 8 seconds long.",)
    assert extract("in 4k please").notes == ("I can make 720p or 1080p videos.",)
    assert extract("8 seconds in 1080p").notes == ()


def test_yes_and_no_are_whole_replies() -> None:
    assert is_yes("OK") and is_yes("yes, go ahead") and is_yes("let's do it!")
    assert not is_yes("yes?") and not is_yes("ok but wait") and not is_yes("maybe")
    assert is_no("Nope") and is_no("cancel that please") and is_no("abort")
    assert not is_no("no problem at all, lovely") and not is_no("stop motion of a clay dog")


def test_requests_are_not_negated_questions() -> None:
    assert asks_for_video("Could you generate a clip of fireworks over a lake?")
    assert not asks_for_video("Could you generate clips?")
    assert not asks_for_video("never make a video of me")
    assert not asks_for_video("a cat", descriptive=True)  # too little to be a description
    assert not asks_for_video("a cat surfing a huge wave", descriptive=False)


async def test_the_rule_based_understander_fits_the_protocol() -> None:
    understander: Understander = RuleBasedUnderstander()
    got = await understander.understand("go ahead", CONFIRMING)
    assert got == Understanding(Intent.CONFIRM)
