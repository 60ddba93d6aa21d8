"""Validate a video file and read its basic properties with PyAV (no ffprobe binary)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from fractions import Fraction

import av
from av.video.frame import VideoFrame

from veo_worker.local_render import save_thumbnail, thumbnail_frame

__all__ = ["InvalidMedia", "MediaInfo", "probe_video"]

# Still-image demuxers (besides the "*_pipe" ones) that present a picture as a 1-frame video.
_IMAGE_FORMATS = {"image2"}
# FFmpeg's demuxer names are lists of aliases; map the ones we care about to one name.
_FORMAT_NAMES = {"mov": "mp4", "mp4": "mp4", "matroska": "mkv", "webm": "webm"}


class InvalidMedia(Exception):
    """The file is not a usable video (empty, undecodable, no video stream, no duration)."""


@dataclass(frozen=True)
class MediaInfo:
    duration_seconds: float
    width: int
    height: int
    codec: str
    format: str
    file_size_bytes: int
    has_audio: bool

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}"


def probe_video(path: pathlib.Path, *, thumbnail: pathlib.Path | None = None) -> MediaInfo:
    """Return the video's properties, or raise InvalidMedia if it is not a complete video.

    Beyond reading the header this demuxes every video packet (no decoding, so it is
    I/O-bound) and decodes a frame: a truncated MP4 with its moov atom at the
    front still has a valid-looking header, and only reading the data reveals it.

    With `thumbnail`, the decoded frame is the thumbnail's (the keyframe nearest the middle,
    found by the same demux pass; see `thumbnail_frame`), saved there: one open and one
    decode for both instead of two.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InvalidMedia(f"{path}: cannot stat file: {exc}") from exc
    if size == 0:
        raise InvalidMedia(f"{path}: file is empty")
    try:
        info, frame = _probe(path, size, middle=thumbnail is not None)
    except InvalidMedia:
        raise
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise InvalidMedia(f"{path}: not a readable video: {exc}") from exc
    if thumbnail is not None:  # outside: failing to write it says nothing about the video
        save_thumbnail(frame, thumbnail)
    return info


def _probe(path: pathlib.Path, size: int, *, middle: bool) -> tuple[MediaInfo, VideoFrame]:
    with av.open(str(path), mode="r") as container:
        format_name = _format_name(container.format.name)
        if format_name in _IMAGE_FORMATS or format_name.endswith("_pipe"):
            raise InvalidMedia(f"{path}: is a still image ({container.format.name}), not a video")
        if not container.streams.video:
            raise InvalidMedia(f"{path}: no video stream ({container.format.name})")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise InvalidMedia(f"{path}: video stream has no frame size")

        duration = _duration_seconds(container, stream)
        if duration <= 0:
            raise InvalidMedia(f"{path}: video has zero or unknown duration")

        packets = 0
        keyframes: list[int] = []  # their pts: the thumbnail is the one nearest the middle
        for packet in container.demux(stream):
            if packet.size == 0:  # demux() ends with an empty flush packet
                continue
            if packet.is_corrupt:
                raise InvalidMedia(f"{path}: corrupt video packet {packets} (truncated file?)")
            packets += 1
            if packet.is_keyframe and packet.pts is not None:
                keyframes.append(packet.pts)
        # nb_frames comes from the sample table; fewer readable packets means truncation.
        if packets == 0 or (stream.frames and packets < stream.frames):
            raise InvalidMedia(
                f"{path}: only {packets} of {stream.frames or '?'} video packets are readable"
                " (truncated file?)"
            )

        if middle:
            frame = thumbnail_frame(container, stream, keyframes)
        else:
            stream.codec_context.thread_count = 1  # one frame: threads cost more than it
            container.seek(0)
            frame = next(container.decode(stream), None)
        if frame is None:
            raise InvalidMedia(f"{path}: no decodable video frame")

        info = MediaInfo(
            duration_seconds=duration,
            width=width,
            height=height,
            codec=stream.codec_context.name,
            format=format_name,
            file_size_bytes=size,
            has_audio=bool(container.streams.audio),
        )
        return info, frame


def _duration_seconds(container: av.container.InputContainer, stream: av.VideoStream) -> float:
    # Prefer the video stream's own duration: the container's may include audio or be rounded.
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return float(Fraction(container.duration, av.time_base))
    return 0.0


def _format_name(name: str) -> str:
    """Map FFmpeg's alias list (e.g. "mov,mp4,m4a,3gp,3g2,mj2") to a single short name."""
    aliases = name.split(",")
    for alias in aliases:
        if alias in _FORMAT_NAMES:
            return _FORMAT_NAMES[alias]
    return aliases[0]
