"""The API's request and response bodies (CONTRACT.md's shapes)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictStr
from pydantic_core import PydanticCustomError
from shared.schemas import (
    ErrorCode,
    GenerationParams,
    ProgressStage,
    Question,
    RenderSpec,
)
from shared.state_machine import Status


def _storable(value: str) -> str:
    """PostgreSQL text and JSONB hold neither NUL nor unpaired surrogates: refuse them here,
    as invalid input, rather than fail at the database."""
    if "\x00" in value:
        raise PydanticCustomError("string_nul", "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "string_unicode", "must be valid Unicode (no unpaired surrogates)"
        ) from None
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("string_blank", "must not be blank")
    return value


Text = Annotated[StrictStr, AfterValidator(_storable)]
Prompt = Annotated[Text, Field(min_length=1, max_length=2000), AfterValidator(_not_blank)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamsIn(GenerationParams):
    """`GenerationParams` (unknown fields refused) with strings the database can hold."""

    model: Annotated[Text, Field(min_length=1, max_length=100)] | None = None
    negative_prompt: Annotated[Text, Field(max_length=1000)] | None = None


class CreateGeneration(Body):
    prompt: Prompt
    conversation_id: uuid.UUID | None = None
    auto_confirm: bool = False
    params: ParamsIn | None = None

    def generation_params(self) -> GenerationParams:
        return GenerationParams.model_validate(self.params.model_dump() if self.params else {})


AnswerKey = Annotated[Text, Field(min_length=1, max_length=100)]


def _answer_value(value: object) -> object:
    """A choice may come as a number (`8` for "8"); anything else but a string is refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise PydanticCustomError("answer_type", "must be a string or a whole number")
    return value


AnswerValue = Annotated[Text, BeforeValidator(_answer_value), Field(max_length=2000)]


class SubmitAnswers(Body):
    answers: Annotated[dict[AnswerKey, AnswerValue], Field(max_length=20)]


class CreateUser(Body):
    name: Annotated[Text, Field(min_length=1, max_length=200), AfterValidator(_not_blank)]


class UserCreated(BaseModel):
    id: uuid.UUID
    name: str
    api_key: str = Field(description="Shown once; only its SHA-256 is stored")


class ProgressOut(BaseModel):
    stage: ProgressStage
    percent: float | None = None
    queue_position: int | None = None


class ResultOut(BaseModel):
    video_url: str
    thumbnail_url: str
    duration_seconds: float
    file_size_bytes: int
    resolution: str = Field(description="'WxH' of the stored file, probed")
    format: str
    processing_time_ms: int


class ErrorOut(BaseModel):
    code: ErrorCode
    message: str


class GenerationOut(BaseModel):
    id: uuid.UUID
    status: Status
    prompt: str
    params: GenerationParams
    conversation_id: uuid.UUID | None
    auto_confirm: bool
    questions: list[Question] = Field(
        description="The questions asked; they stay listed once answered (see `answers`)"
    )
    answers: dict[str, str]
    spec: RenderSpec | None = Field(
        description="The complete request that will be rendered, once nothing is left to ask"
    )
    estimated_cost_usd: float | None
    progress: ProgressOut | None
    result: ResultOut | None
    error: ErrorOut | None
    created_at: datetime
    updated_at: datetime


class GenerationPage(BaseModel):
    items: list[GenerationOut]
    next_cursor: str | None


class SeedGeneration(BaseModel):
    """The seed's generation record as its `useGenerationStatus` hook reads it (camelCase)."""

    id: uuid.UUID
    status: Status
    prompt: str
    resultUrl: str | None
    thumbnailUrl: str | None
    error: str | None
    progress: float | None
    conversationId: uuid.UUID | None
    jobId: str
    userId: uuid.UUID
    duration: float | None
    fileSize: int | None
    resolution: str | None
    format: str | None
    processingTime: int | None
    createdAt: datetime
    updatedAt: datetime


class SeedStatus(BaseModel):
    generation: SeedGeneration
