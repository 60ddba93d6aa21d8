"""`/media/{key}?exp=&sig=`: files of the local storage, behind expiring HMAC-signed links.

No API key: the signature is the permission. Range requests are answered by `FileResponse`.
"""

from __future__ import annotations

import mimetypes
import time

from fastapi import APIRouter
from shared.logging import get_logger
from shared.media import LocalStorage
from starlette.responses import FileResponse, Response

from api.deps import AppStorage
from api.problems import Problem, not_found, responses

router = APIRouter(tags=["media"])
log = get_logger("MEDIA")

_TYPES = {".mp4": "video/mp4", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


@router.get(
    "/media/{key:path}",
    responses={206: {"description": "Partial content (Range)"}, **responses(403, 404)},
    response_class=FileResponse,
    summary="A stored video or thumbnail, by signed link",
)
async def media(
    key: str, storage: AppStorage, exp: str | None = None, sig: str | None = None
) -> Response:
    if not isinstance(storage, LocalStorage):
        raise not_found("media")
    # The signer reads `exp` with int() and compares `sig` with hmac.compare_digest:
    # anything but ASCII would make either raise instead of answer False.
    if not (exp and sig and exp.isascii() and exp.isdigit() and sig.isascii()):
        raise Problem(403, "the link is not signed")
    if not storage.signer.verify(key, exp, sig):
        log.warning("Bad or expired media link", key=key)
        raise Problem(403, "the link's signature is invalid or has expired")
    try:
        path = storage.path_for(key)
    except ValueError:
        raise not_found("media") from None
    if not path.is_file():
        raise not_found("media")
    media_type = _TYPES.get(path.suffix.lower()) or (
        mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    )
    # Cacheable for as long as the link itself lives.
    max_age = max(0, int(exp) - int(time.time()))
    return FileResponse(
        path, media_type=media_type, headers={"Cache-Control": f"private, max-age={max_age}"}
    )


router.add_api_route("/media/{key:path}", media, methods=["HEAD"], include_in_schema=False)
