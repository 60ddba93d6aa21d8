"""Built-in "local" video provider: renders a real H.264 MP4 showing the prompt.

Everything here is synchronous and CPU-bound; callers run it via ``asyncio.to_thread``.
Only PyAV and Pillow are used (numpy is not a dependency). Full-frame work is left to
FFmpeg: the background is drawn ~96 px wide and swscale upscales it straight into
yuv420p. The text overlays are greyscale, so they are blended into the YUV planes
directly (Y gets the grey level, chroma is pulled towards neutral), touching only the
pixels under the overlays.
"""

from __future__ import annotations

import colorsys
import contextlib
import hashlib
import math
import os
import pathlib
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
from av.video.frame import VideoFrame
from av.video.plane import VideoPlane
from av.video.reformatter import ColorRange, Colorspace, Interpolation, VideoReformatter
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = ["render_thumbnail", "render_video", "save_thumbnail", "thumbnail_frame"]

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

# Smaller frames are useless for a preview and not worth special-casing.
_MIN_SIDE = 16
# BT.709 code point for colorspace / primaries / transfer (ISO/IEC 23091-4).
_BT709 = 1
# The background is drawn this wide and upscaled; blur + bicubic hide the low resolution.
_BG_SMALL_WIDTH = 96
# Seconds for the gradient to scroll through one full palette cycle.
_BG_CYCLE_SECONDS = 12.0
# Common letters/punctuation that have no Unicode decomposition to an ASCII base.
_FALLBACKS = str.maketrans(
    {
        "—": "-",
        "–": "-",
        "‐": "-",
        "‑": "-",
        "−": "-",
        "ß": "ss",
        "ø": "o",
        "Ø": "O",
        "æ": "ae",
        "Æ": "AE",
        "œ": "oe",
        "Œ": "OE",
        "ł": "l",
        "Ł": "L",
        "€": "EUR",
    }
)
# Limited-range ("MPEG") luma for an 8-bit grey level.
_GREY_TO_LUMA = [16 + round(v * 219 / 255) for v in range(256)]


@dataclass(frozen=True)
class _Overlay:
    """A greyscale RGBA image prepared for blending into a yuv420p frame at (x, y)."""

    x: int  # even, so the chroma planes line up
    y: int
    luma: Image.Image  # "L", limited-range Y values
    alpha: Image.Image  # "L"
    chroma_alpha: Image.Image  # "L", alpha at half resolution
    neutral: Image.Image  # "L" filled with 128: zero chroma, i.e. grey

    @classmethod
    def from_rgba(cls, image: Image.Image, x: int, y: int, frame_size: tuple[int, int]) -> _Overlay:
        # Snap to an even offset and pad to an even size, so every chroma sample is either
        # fully inside or outside; clip to the (even-sized) frame, since the blend writes
        # straight into the plane buffers.
        x, y = max(0, x - x % 2), max(0, y - y % 2)
        size = (
            max(0, min(image.width + image.width % 2, frame_size[0] - x)),
            max(0, min(image.height + image.height % 2, frame_size[1] - y)),
        )
        padded = Image.new("RGBA", size)
        padded.paste(image, (0, 0))
        half = (padded.width // 2, padded.height // 2)
        alpha = padded.getchannel("A")
        return cls(
            x=x,
            y=y,
            luma=padded.convert("L").point(_GREY_TO_LUMA),
            alpha=alpha,
            chroma_alpha=alpha.resize(half, Image.Resampling.BOX),
            neutral=Image.new("L", half, 128),
        )

    def blend_into(self, frame: VideoFrame) -> None:
        if not (self.luma.width and self.luma.height):
            return  # clipped away entirely
        y_plane, u_plane, v_plane = frame.planes
        _paste_into_plane(y_plane, self.x, self.y, self.luma, self.alpha)
        for plane in (u_plane, v_plane):
            _paste_into_plane(plane, self.x // 2, self.y // 2, self.neutral, self.chroma_alpha)


def _paste_into_plane(
    plane: VideoPlane, x: int, y: int, source: Image.Image, mask: Image.Image
) -> None:
    """Alpha-blend ``source`` into the rectangle of ``plane`` at (x, y), in place."""
    width, height = source.size
    stride = plane.line_size
    buf = memoryview(plane)  # writable view of the frame's plane
    rows = range(y * stride + x, (y + height) * stride + x, stride)
    region = Image.frombytes("L", source.size, b"".join(buf[r : r + width] for r in rows))
    region.paste(source, (0, 0), mask)
    data = region.tobytes()
    for i, r in enumerate(rows):
        buf[r : r + width] = data[i * width : (i + 1) * width]


def render_video(
    prompt: str,
    *,
    width: int,
    height: int,
    duration_seconds: int,
    out_path: pathlib.Path,
    fps: int = 24,
    seed: int | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> None:
    """Render ``duration_seconds`` of H.264/yuv420p MP4 showing ``prompt`` to ``out_path``.

    The file is written to a temp file in the same directory and renamed into place,
    so readers never observe a partial video. An exception raised by ``on_progress``
    (e.g. on cancellation) aborts the render and removes the temp file.
    """
    if width < _MIN_SIDE or height < _MIN_SIDE or width % 2 or height % 2:
        raise ValueError(
            f"width/height must be even (yuv420p) and >= {_MIN_SIDE}: {width}x{height}"
        )
    if duration_seconds <= 0:
        raise ValueError(f"duration_seconds must be positive: {duration_seconds}")
    if fps <= 0:
        raise ValueError(f"fps must be positive: {fps}")

    # The seed alone picks the look (so a re-render with another prompt keeps its palette);
    # without one the prompt does, so the same prompt always looks the same.
    palette_key = f"seed:{seed}" if seed is not None else f"prompt:{prompt}"
    digest = hashlib.sha256(palette_key.encode()).digest()
    total_frames = duration_seconds * fps
    progress_step = max(1, total_frames // 10)
    background = _Background(width, height, digest)
    text = _layout_prompt(prompt, width, height)
    counter = _Counter(width, height, fps, total_frames)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_output(out_path) as tmp_path:
        # Explicit format: the temp name's suffix must not decide the muxer.
        container = av.open(
            str(tmp_path), mode="w", format="mp4", options={"movflags": "+faststart"}
        )
        try:
            stream = container.add_stream("libx264", rate=fps)
            stream.width = width
            stream.height = height
            stream.pix_fmt = "yuv420p"
            # ultrafast keeps 1080p well under real time on 2 cores; it also disables
            # B-frames, so there is no edit list and the container duration is exact.
            # A keyframe every second (x264's default is one per 250 frames: the first only):
            # the thumbnail, the keyframe nearest the middle, is then within half a second of
            # it, decoded alone (~12% larger files).
            stream.options = {"preset": "ultrafast", "crf": "23", "g": str(fps)}
            ctx = stream.codec_context
            # PyAV defaults to slice threads, which make each encode() call block until
            # the frame is done; frame threads let x264 work while we draw the next frame.
            ctx.thread_type = "FRAME"
            ctx.time_base = Fraction(1, fps)
            ctx.colorspace = _BT709
            ctx.color_primaries = _BT709
            ctx.color_trc = _BT709
            ctx.color_range = int(ColorRange.MPEG)
            reformatter = VideoReformatter()

            for index in range(total_frames):
                # Upscale and convert in one swscale pass, explicitly BT.709 limited range
                # to match the tags above (swscale would default to BT.601).
                frame = reformatter.reformat(
                    VideoFrame.from_image(background.frame(index / fps)),
                    width=width,
                    height=height,
                    format="yuv420p",
                    src_colorspace=Colorspace.ITU709,
                    dst_colorspace=Colorspace.ITU709,
                    interpolation=Interpolation.BICUBIC,
                    src_color_range=ColorRange.JPEG,
                    dst_color_range=ColorRange.MPEG,
                )
                text.blend_into(frame)
                counter.overlay(index).blend_into(frame)
                frame.pts = index
                frame.time_base = Fraction(1, fps)
                for packet in stream.encode(frame):
                    container.mux(packet)
                done = index + 1
                if on_progress is not None and (done % progress_step == 0 or done == total_frames):
                    on_progress(done / total_frames)
            for packet in stream.encode(None):
                container.mux(packet)
        finally:
            container.close()


def render_thumbnail(
    video_path: pathlib.Path, out_path: pathlib.Path, *, max_width: int = 640
) -> None:
    """Save a JPEG of the keyframe nearest the middle (see `thumbnail_frame`), no wider than
    ``max_width``.

    Cheap on purpose (it runs once per finished video): one frame decoded, on one thread, and
    the downscale and RGB conversion done in one swscale pass (area averaging) instead of a
    full-size RGB image resized by Pillow.
    """
    if max_width <= 0:
        raise ValueError(f"max_width must be positive: {max_width}")
    with av.open(str(video_path)) as container:
        if not container.streams.video:
            raise ValueError(f"{video_path} has no video stream")
        stream = container.streams.video[0]
        keyframes = [
            packet.pts
            for packet in container.demux(stream)
            if packet.is_keyframe and packet.pts is not None
        ]
        picked = thumbnail_frame(container, stream, keyframes)
        if picked is None:
            raise ValueError(f"{video_path} has no decodable video frames")
        save_thumbnail(picked, out_path, max_width=max_width)


def thumbnail_frame(
    container: av.container.InputContainer, stream: av.VideoStream, keyframes: list[int]
) -> VideoFrame | None:
    """The keyframe nearest the middle of the video (`keyframes`: their pts, from a demux
    pass), else the first frame; None if no frame decodes.

    A keyframe decodes on its own: one frame's work, and an exact picture, wherever it is.
    The exact middle frame would cost every frame from the keyframe before it (a video with
    one keyframe, as short encodes often have, decoded half through: ~20 ms at 720p, nine
    tenths of the probe), so where the video has a keyframe near the middle that is the
    thumbnail, and where it has only the first, the first frame is.
    """
    context = stream.codec_context
    context.thread_count = 1  # threads cost more to start than one frame's decode takes
    if keyframes:
        middle = _middle_seconds(container, stream)
        base = stream.time_base or Fraction(1, av.time_base)
        start = stream.start_time or 0
        target = min(keyframes, key=lambda pts: abs(float((pts - start) * base) - middle))
        context.skip_frame = "NONKEY"  # only keyframes are decoded: the first is the one
        with contextlib.suppress(av.FFmpegError):
            container.seek(target, stream=stream)
            frame = next(container.decode(stream), None)
            if frame is not None:
                return frame
        context.skip_frame = "DEFAULT"
    # No keyframe index, or the seek failed on an odd file: the first frame that decodes.
    container.seek(0)
    return next(container.decode(stream), None)


def save_thumbnail(frame: VideoFrame, out_path: pathlib.Path, *, max_width: int = 640) -> None:
    """`frame` as a JPEG no wider than ``max_width`` (written atomically)."""
    width, height = frame.width, frame.height
    if width > max_width:
        width, height = max_width, max(1, round(height * max_width / width))
    image = frame.reformat(
        width=width, height=height, format="rgb24", interpolation=Interpolation.AREA
    ).to_image()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_output(out_path) as tmp_path:
        image.save(tmp_path, format="JPEG", quality=85)


def _middle_seconds(container: av.container.InputContainer, stream: av.VideoStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base) / 2
    if container.duration is not None:
        return container.duration / av.time_base / 2
    return 0.0


@contextlib.contextmanager
def _atomic_output(out_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """Yield a temp path beside ``out_path``; rename it over ``out_path`` on success."""
    fd, name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = pathlib.Path(name)
    try:
        yield tmp_path
        tmp_path.chmod(0o644)  # mkstemp creates 0600; the result should be world-readable
        os.replace(tmp_path, out_path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


class _Background:
    """Slowly scrolling cyclic gradient with drifting soft blobs, palette from a hash.

    Drawn at ~96 px wide and blurred; the caller upscales it. The scroll is sub-pixel
    (an affine transform), so motion stays smooth after upscaling.
    """

    def __init__(self, width: int, height: int, digest: bytes) -> None:
        self.small = (_BG_SMALL_WIDTH, max(8, round(_BG_SMALL_WIDTH * height / width)))
        sw, sh = self.small
        base_hue = digest[0] / 255
        # Mid-dark, fairly saturated colours so white text stays readable on top.
        palette = [
            _hsv(
                base_hue + offset + digest[i + 1] / 2550,
                0.55 + digest[i + 4] / 900,
                0.42 + digest[i + 7] / 1400,
            )
            for i, offset in enumerate((0.0, 0.14, 0.33))
        ]
        # Two periods side by side: any window of width ``sw`` is a seamless crop.
        strip = Image.new("RGB", (2 * sw, 1))
        for x in range(2 * sw):
            pos = (x % sw) / sw * len(palette)
            a, b = palette[int(pos)], palette[(int(pos) + 1) % len(palette)]
            strip.putpixel((x, 0), _lerp(a, b, pos - int(pos)))
        strip = strip.resize((2 * sw, sh), Image.Resampling.NEAREST)
        # Darken towards the bottom for depth; also keeps the frame counter legible.
        shade = Image.linear_gradient("L").resize((2 * sw, sh)).point(lambda v: v * 7 // 10)
        self.strip = Image.composite(Image.new("RGB", strip.size), strip, shade)
        self.blobs = [
            (
                _hsv(base_hue + 0.5 + digest[10 + i] / 1275, 0.5, 0.85),  # complementary
                0.18 + digest[13 + i] / 1275,  # radius as a fraction of small height
                0.05 + digest[16 + i] / 2550,  # orbit speed (cycles per second)
                digest[19 + i] / 255 * math.tau,  # phase
            )
            for i in range(3)
        ]
        self.blur = ImageFilter.GaussianBlur(radius=sh / 10)

    def frame(self, t: float) -> Image.Image:
        sw, sh = self.small
        dx = (t / _BG_CYCLE_SECONDS * sw) % sw
        small = self.strip.transform(
            self.small, Image.Transform.AFFINE, (1, 0, dx, 0, 1, 0), Image.Resampling.BILINEAR
        )
        overlay = Image.new("RGB", self.small)
        mask = Image.new("L", self.small)
        draw_overlay = ImageDraw.Draw(overlay)
        draw_mask = ImageDraw.Draw(mask)
        for i, (colour, radius_frac, speed, phase) in enumerate(self.blobs):
            angle = t * speed * math.tau + phase
            cx = sw * (0.5 + 0.38 * math.cos(angle * (1 + i % 2)))
            cy = sh * (0.5 + 0.32 * math.sin(angle))
            r = radius_frac * sh
            box = (cx - r, cy - r, cx + r, cy + r)
            draw_overlay.ellipse(box, fill=colour)
            draw_mask.ellipse(box, fill=110)
        small.paste(overlay, (0, 0), mask)
        return small.filter(self.blur)


def _layout_prompt(prompt: str, width: int, height: int) -> _Overlay:
    """Word-wrap the prompt onto a translucent panel, shrinking the font for long prompts."""
    collapsed = " ".join(unicodedata.normalize("NFC", prompt).split())
    text = _displayable(collapsed, _font(16)) or "(empty prompt)"
    max_text_width = int(width * 0.84)
    max_text_height = int(height * 0.6)
    # Readable relative to the frame, but capped by width so portrait frames still fit words.
    start_size = max(12, round(min(height / 12, width / 15)))
    size = start_size
    while True:
        font = _font(size)
        line_height = _line_height(font)
        lines = _wrap(text, font, max_text_width)
        max_lines = max(1, max_text_height // line_height)
        if len(lines) <= max_lines or size <= max(10, start_size // 2):
            break
        size = max(10, round(size * 0.85))
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _ellipsize(lines[-1], font, max_text_width)

    pad = max(6, size // 2)
    text_width = max(int(font.getlength(line)) for line in lines)
    panel = Image.new("RGBA", (text_width + 2 * pad, line_height * len(lines) + 2 * pad))
    draw = ImageDraw.Draw(panel)
    draw.rounded_rectangle(
        (0, 0, panel.width - 1, panel.height - 1), radius=pad, fill=(0, 0, 0, 120)
    )
    shadow = max(1, size // 24)
    for i, line in enumerate(lines):
        x = (panel.width - font.getlength(line)) / 2
        y = pad + i * line_height
        draw.text((x + shadow, y + shadow), line, font=font, fill=(0, 0, 0, 180))
        draw.text((x, y), line, font=font, fill=(255, 255, 255, 255))
    position = ((width - panel.width) // 2, (height - panel.height) // 2)
    return _Overlay.from_rgba(panel, *position, (width, height))


def _displayable(text: str, font: _Font) -> str:
    """Replace characters the font lacks, which would otherwise render as tofu boxes.

    Pillow's bundled font covers little beyond ASCII, so accented letters fall back to
    their base letter ("é" -> "e"), invisible format marks are dropped and anything
    else (CJK, emoji) becomes "?".
    """
    notdef = _glyph(font, "\U0010ffff")
    cache: dict[str, str] = {}
    out: list[str] = []
    for ch in text:
        if ch.isascii():
            out.append(ch)
            continue
        if ch not in cache:
            if unicodedata.category(ch) in ("Mn", "Me", "Cf"):
                cache[ch] = ""
            elif _glyph(font, ch) != notdef:
                cache[ch] = ch
            else:
                base = "".join(
                    c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c)
                )
                base = base.translate(_FALLBACKS)
                ok = base and all(c.isascii() or _glyph(font, c) != notdef for c in base)
                cache[ch] = base if ok else "?"
        out.append(cache[ch])
    return " ".join("".join(out).split())


def _glyph(font: _Font, ch: str) -> bytes | None:
    """Rendered bitmap of one character, for comparing against the font's .notdef box."""
    try:
        left, top, right, bottom = (int(v) for v in font.getbbox(ch))
        image = Image.new("L", (max(1, right - left), max(1, bottom - top)))
        ImageDraw.Draw(image).text((-left, -top), ch, font=font, fill=255)
    except (UnicodeError, ValueError, OSError):
        return None  # e.g. the non-FreeType fallback font cannot encode the character
    return image.tobytes()


def _wrap(text: str, font: _Font, max_width: int) -> list[str]:
    """Greedy word wrap; words wider than a line are split by characters."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = word
        while font.getlength(current) > max_width and len(current) > 1:
            cut = len(current) - 1
            while cut > 1 and font.getlength(current[:cut]) > max_width:
                cut -= 1
            lines.append(current[:cut])
            current = current[cut:]
    if current:
        lines.append(current)
    return lines


def _ellipsize(line: str, font: _Font, max_width: int) -> str:
    while line and font.getlength(line + "…") > max_width:
        line = line[:-1]
    return line.rstrip() + "…"


class _Counter:
    """Per-frame timecode (mm:ss:ff) and frame number in the bottom-left corner."""

    def __init__(self, width: int, height: int, fps: int, total: int) -> None:
        short_side = min(width, height)
        self.font = _font(max(10, short_side // 30))
        self.fps = fps
        self.total = total
        self.stroke = max(1, short_side // 360)
        # The last label has the most digits; "8" is the widest digit in most fonts.
        widest = self._label(total - 1).translate(str.maketrans("0123456789", "8888888888"))
        box_width = int(self.font.getlength(widest)) + 2 * self.stroke + 2
        self.size = (box_width, _line_height(self.font) + 2 * self.stroke)
        margin = max(4, short_side // 40)
        self.position = (margin, height - margin - self.size[1])
        self.frame_size = (width, height)

    def _label(self, index: int) -> str:
        seconds, frame_in_second = divmod(index, self.fps)
        timecode = f"{seconds // 60:02d}:{seconds % 60:02d}:{frame_in_second:02d}"
        return f"{timecode}  {index + 1:>{len(str(self.total))}}/{self.total}"

    def overlay(self, index: int) -> _Overlay:
        image = Image.new("RGBA", self.size)
        ImageDraw.Draw(image).text(
            (self.stroke, self.stroke),
            self._label(index),
            font=self.font,
            fill=(255, 255, 255, 255),
            stroke_width=self.stroke,
            stroke_fill=(0, 0, 0, 255),
        )
        return _Overlay.from_rgba(image, *self.position, self.frame_size)


def _font(size: int) -> _Font:
    # Pillow >= 10.1 ships a scalable default font (needs FreeType, which wheels include).
    return ImageFont.load_default(size=size)


def _line_height(font: _Font) -> int:
    top, bottom = font.getbbox("Ágjy|")[1::2]
    return max(1, int((bottom - top) * 1.25))


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(s, 1.0), min(v, 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def _lerp(a: tuple[int, int, int], b: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return (
        round(a[0] + (b[0] - a[0]) * f),
        round(a[1] + (b[1] - a[1]) * f),
        round(a[2] + (b[2] - a[2]) * f),
    )
