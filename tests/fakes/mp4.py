"""Small but real MP4 files for the fake Veo server: H.264 video + AAC audio, like Veo 3's.

PyAV only (numpy is not installed): planes are filled from bytes, respecting each plane's
padded line size. A band moves across a flat background so frames differ and a decoder has
real work to do; everything else is cheap to encode (1080p x 8 s takes about a second).
"""

from __future__ import annotations

import io
from fractions import Fraction

import av

FPS = 24
AUDIO_RATE = 48_000
_AUDIO_FRAME = 1024


def render_mp4(width: int, height: int, seconds: int) -> bytes:
    """An MP4 of exactly `seconds` at `width`x`height`, 24 fps, with a stereo AAC track."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast", "crf": "38"}
        audio = container.add_stream("aac", rate=AUDIO_RATE)
        audio.layout = "stereo"
        for index in range(seconds * FPS):
            for packet in video.encode(_frame(width, height, index)):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        total, pts = seconds * AUDIO_RATE, 0
        while pts < total:
            samples = min(_AUDIO_FRAME, total - pts)
            frame = av.AudioFrame(format="fltp", layout="stereo", samples=samples)
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))  # silence
            frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, pts, Fraction(1, AUDIO_RATE)
            for packet in audio.encode(frame):
                container.mux(packet)
            pts += samples
        for packet in audio.encode():
            container.mux(packet)
    return buffer.getvalue()


def _frame(width: int, height: int, index: int) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    luma = frame.planes[0]
    row = bytearray([48 + (index * 3) % 160]) * luma.line_size
    start = (index * 8) % width
    stop = min(start + 32, width)
    row[start:stop] = bytes([235]) * (stop - start)
    luma.update(bytes(row) * luma.height)
    for chroma in frame.planes[1:]:
        chroma.update(bytes([128]) * (chroma.line_size * chroma.height))
    frame.pts, frame.time_base = index, Fraction(1, FPS)
    return frame
