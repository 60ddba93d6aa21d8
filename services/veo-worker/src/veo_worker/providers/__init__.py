"""Video providers, chosen by settings (`VIDEO_PROVIDER`, or `veo` when a Gemini key is set)."""

from __future__ import annotations

from shared.settings import Settings

from veo_worker.providers.local import LocalProvider
from veo_worker.providers.veo import VeoProvider


def build_provider(settings: Settings) -> LocalProvider | VeoProvider:
    if settings.provider == "veo":
        return VeoProvider(settings)
    return LocalProvider()
