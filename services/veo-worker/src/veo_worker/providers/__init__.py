"""Video providers, chosen by settings (`VIDEO_PROVIDER`, or `veo` when a Gemini key is set)."""

from __future__ import annotations

from shared.settings import Settings

from veo_worker.providers.base import VideoProvider
from veo_worker.providers.local import LocalProvider


class ProviderUnavailable(Exception):
    """The configured provider is not built into this worker."""


def build_provider(settings: Settings) -> VideoProvider:
    if settings.provider == "local":
        return LocalProvider()
    raise ProviderUnavailable(
        f"VIDEO_PROVIDER={settings.provider} is not available in this build; "
        "use VIDEO_PROVIDER=local (or unset GEMINI_API_KEY)"
    )
