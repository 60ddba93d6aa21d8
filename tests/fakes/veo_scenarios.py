"""How the fake Veo behaves for one submission.

A scenario is written `name key=value ...`, e.g. `succeed polls=2`, `rate_limited times=3
retry_after=2`, `error code=3 message=bad`. The fake has a default scenario; a prompt that
contains `[scenario:<spec>]` (e.g. `a cat [scenario:filtered]`) overrides it for that
submission, so one test can script many submissions without touching the fake.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

KINDS = (
    "succeed",  # pending for `polls` polls and `seconds` seconds, then done with a sample
    "filtered",  # done with raiMediaFilteredCount/Reasons and no samples
    "error",  # done with an operation error {code, message}
    "rate_limited",  # the submit answers 429 + Retry-After `times` times, then succeeds
    "unavailable",  # the submit answers `status` (503) `times` times, then succeeds
    "slow",  # like succeed but pending for `seconds` (60 by default)
    "never",  # pending forever
    "malformed",  # once done, polls answer invalid JSON (`times` times; 0 = forever)
    "video_404",  # done with a sample whose download URI answers 404
    "empty_video",  # done with a sample whose download answers 0 bytes
)

TAG = re.compile(r"\[scenario:([^\]]+)\]")

DEFAULT_FILTER_REASON = (
    "Unable to generate videos because the prompt violates Google's Responsible AI practices. "
    "You can try rephrasing the prompt. If you think this was an error, send feedback. "
    "Support codes: 58061214"
)


@dataclass(frozen=True)
class Scenario:
    kind: str = "succeed"
    polls: int = 1  # polls answered "pending" before done (0: the first poll is done)
    seconds: float = 0.0  # and at least this long after submission
    times: int = 2  # rate_limited/unavailable: rejected submits; malformed: bad polls
    retry_after: int = 1  # rate_limited: Retry-After / RetryInfo seconds
    status: int = 503  # unavailable: the HTTP status of the rejections
    poll_errors: int = 0  # the first N polls answer HTTP 503 (any kind)
    code: int = 13  # error: google.rpc.Code in operation.error (13 = INTERNAL)
    message: str = ""  # error: message; filtered: the reason

    @classmethod
    def parse(cls, spec: str | Scenario) -> Scenario:
        if isinstance(spec, Scenario):
            return spec
        name, *pairs = spec.split()
        if name not in KINDS:
            raise ValueError(f"unknown Veo scenario {name!r}; one of {', '.join(KINDS)}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, object] = {"kind": name}
        if name == "slow":
            values["seconds"] = 60.0
        if name == "malformed":
            values["times"] = 0
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            if not sep or key not in fields or key == "kind":
                raise ValueError(f"bad scenario option {pair!r} in {spec!r}")
            kind = type(getattr(cls(), key))
            values[key] = raw.replace("_", " ") if kind is str else kind(raw)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def spec(self) -> str:
        default = Scenario.parse(self.kind)
        changed = [
            f"{f.name}={getattr(self, f.name)}"
            for f in dataclasses.fields(self)
            if f.name != "kind" and getattr(self, f.name) != getattr(default, f.name)
        ]
        return " ".join([self.kind, *changed])

    @property
    def rejects_with(self) -> int | None:
        """The HTTP status of the submit rejections this scenario scripts, if any."""
        return {"rate_limited": 429, "unavailable": self.status}.get(self.kind)


def from_prompt(prompt: str) -> Scenario | None:
    match = TAG.search(prompt)
    return Scenario.parse(match.group(1)) if match else None
