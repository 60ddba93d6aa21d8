"""Bodies of `/v1/api-keys`: a key is shown whole once, when made; then only its prefix."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from api.schemas import Body, Text

KeyName = Annotated[Text, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class CreateKey(Body):
    name: KeyName | None = None


class KeyOut(BaseModel):
    id: uuid.UUID
    prefix: str = Field(description="The key's first characters, to tell keys apart")
    name: str | None
    created_at: datetime
    last_used_at: datetime | None = Field(description="Recorded at most once a minute")
    revoked_at: datetime | None
    current: bool = Field(description="The key this request was made with")


class KeyCreated(KeyOut):
    api_key: str = Field(description="Shown once; only its SHA-256 is stored")


class KeyList(BaseModel):
    items: list[KeyOut]
