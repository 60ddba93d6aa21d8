"""Tests for the local provider's renderer and the PyAV-based probe."""

from __future__ import annotations

import pathlib
import random
import struct
from collections.abc import Callable
from fractions import Fraction

import av
import pytest
from av.audio.frame import AudioFrame
from PIL import Image, ImageChops, ImageStat
from veo_worker.local_render import render_thumbnail, render_video
from veo_worker.probe import InvalidMedia, MediaInfo, probe_video

PROMPT = "A golden retriever surfing a huge wave at sunset, cinematic drone shot"


def _render(
    tmp: pathlib.Path,
    name: str,
    prompt: str = PROMPT,
    *,
    width: int = 320,
    height: int = 180,
    duration_seconds: int = 2,
    on_progress: Callable[[float], None] | None = None,
) -> pathlib.Path:
    out = tmp / name
    render_video(
        prompt,
        width=width,
        height=height,
        duration_seconds=duration_seconds,
        out_path=out,
        seed=7,
        on_progress=on_progress,
    )
    return out


def _frame(path: pathlib.Path, index: int = 0) -> Image.Image:
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return frame.to_image()
    raise AssertionError(f"{path} has no frame {index}")


def _mean_diff(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def _top_level_boxes(path: pathlib.Path) -> list[str]:
    data = path.read_bytes()
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        boxes.append(kind.decode("latin-1"))
        if size < 8:
            break
        offset += size
    return boxes


@pytest.fixture(scope="module")
def small_video(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return _render(tmp_path_factory.mktemp("small"), "small.mp4")


def test_small_render_is_valid_h264_mp4(small_video: pathlib.Path) -> None:
    info = probe_video(small_video)
    assert info.codec == "h264"
    assert info.format == "mp4"
    assert (info.width, info.height) == (320, 180)
    assert info.resolution == "320x180"
    assert info.duration_seconds == pytest.approx(2.0, abs=0.1)
    assert info.file_size_bytes == small_video.stat().st_size > 0
    assert info.has_audio is False
    with av.open(str(small_video)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.frames == 48
    # faststart: the index sits before the media data so playback can start while streaming.
    boxes = _top_level_boxes(small_video)
    assert boxes.index("moov") < boxes.index("mdat")


def test_render_leaves_no_temp_files_and_reports_progress(tmp_path: pathlib.Path) -> None:
    progress: list[float] = []
    out = _render(tmp_path, "clip.mp4", duration_seconds=1, on_progress=progress.append)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    assert out.stat().st_mode & 0o444 == 0o444
    assert 8 <= len(progress) <= 12
    assert progress == sorted(progress)
    assert progress[-1] == 1.0


def test_progress_callback_error_aborts_and_cleans_up(tmp_path: pathlib.Path) -> None:
    def cancel(fraction: float) -> None:
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        _render(tmp_path, "clip.mp4", duration_seconds=1, on_progress=cancel)
    assert list(tmp_path.iterdir()) == []


def test_frames_show_prompt_and_background_moves(
    small_video: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    other = _render(tmp_path, "other.mp4", prompt="A completely different prompt about cats")
    first, other_first = _frame(small_video, 0), _frame(other, 0)

    colours = first.getcolors(maxcolors=1 << 24)
    assert colours is not None and len(colours) > 500

    # Same seed means same background, so the difference in the middle comes from the text.
    middle = (60, 50, 260, 130)
    assert _mean_diff(first.crop(middle), other_first.crop(middle)) > 5
    corner = (0, 0, 40, 20)
    assert _mean_diff(first.crop(corner), other_first.crop(corner)) < 3

    # The background animates: first and last frame differ outside the text panel.
    last = _frame(small_video, 47)
    assert _mean_diff(first.crop(corner), last.crop(corner)) > 1


def test_long_and_unicode_prompts_render(tmp_path: pathlib.Path) -> None:
    long_prompt = " ".join(["supercalifragilisticexpialidocious"] * 3 + ["word"] * 400)
    for i, prompt in enumerate([long_prompt, "Ünïcödé 🎬 中文 — «quotes»", "   "]):
        out = _render(tmp_path, f"p{i}.mp4", prompt=prompt, duration_seconds=1)
        assert probe_video(out).duration_seconds == pytest.approx(1.0, abs=0.1)


def test_tiny_frames_clip_overlays(tmp_path: pathlib.Path) -> None:
    # Text panel and counter are wider than the frame here; they must be clipped, not overflow.
    for width, height in [(16, 16), (64, 36), (36, 64)]:
        out = _render(
            tmp_path, f"{width}x{height}.mp4", width=width, height=height, duration_seconds=1
        )
        assert probe_video(out).resolution == f"{width}x{height}"


def test_characters_missing_from_font_fall_back_to_ascii(tmp_path: pathlib.Path) -> None:
    # The default font has no "é"/"—"; they must render as "e"/"-", not as tofu boxes.
    accented = _frame(_render(tmp_path, "a.mp4", prompt="Café — crème brûlée", duration_seconds=1))
    plain = _frame(_render(tmp_path, "p.mp4", prompt="Cafe - creme brulee", duration_seconds=1))
    assert _mean_diff(accented, plain) < 0.5


@pytest.mark.parametrize(("width", "height"), [(1280, 720), (720, 1280)])
def test_hd_render_and_thumbnail(tmp_path: pathlib.Path, width: int, height: int) -> None:
    video = _render(tmp_path, "hd.mp4", width=width, height=height, duration_seconds=4)
    info = probe_video(video)
    assert (info.codec, info.width, info.height) == ("h264", width, height)
    assert info.duration_seconds == pytest.approx(4.0, abs=0.1)

    thumb = tmp_path / "thumb.jpg"
    render_thumbnail(video, thumb)
    with Image.open(thumb) as img:
        assert img.format == "JPEG"
        assert img.width == 640
        assert img.height == pytest.approx(640 * height / width, abs=1)


def test_thumbnail_never_upscales(small_video: pathlib.Path, tmp_path: pathlib.Path) -> None:
    thumb = tmp_path / "thumb.jpg"
    render_thumbnail(small_video, thumb)
    with Image.open(thumb) as img:
        assert (img.format, img.size) == ("JPEG", (320, 180))


@pytest.mark.parametrize(("width", "height"), [(321, 180), (0, 180), (320, -2), (14, 16)])
def test_rejects_bad_dimensions(tmp_path: pathlib.Path, width: int, height: int) -> None:
    with pytest.raises(ValueError):
        _render(tmp_path, "bad.mp4", width=width, height=height)


def test_media_info_resolution() -> None:
    info = MediaInfo(8.0, 1080, 1920, "h264", "mp4", 1, False)
    assert info.resolution == "1080x1920"


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("empty", lambda video: b"", "empty"),
        # Fixed noise: about one random 64 KB in 130 happens to open as some format and fails
        # another check (e.g. "no video stream (lrc)"), which made this case flaky.
        ("random", lambda video: random.Random(0).randbytes(64 * 1024), "not a readable video"),
        ("text", lambda video: b"hello world\n" * 100, "not a readable video"),
        ("truncated", lambda video: video[: len(video) // 2], "truncated"),
        ("header-only", lambda video: video[:2000], "truncated"),
        ("last-bytes-missing", lambda video: video[:-10], "truncated"),
    ],
)
def test_probe_rejects_bad_files(
    small_video: pathlib.Path,
    tmp_path: pathlib.Path,
    name: str,
    make: Callable[[bytes], bytes],
    message: str,
) -> None:
    path = tmp_path / f"{name}.mp4"
    path.write_bytes(make(small_video.read_bytes()))
    with pytest.raises(InvalidMedia, match=message):
        probe_video(path)


def test_probe_makes_the_thumbnail_from_its_decoded_frame(
    small_video: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """The worker probes and thumbnails in one pass: the same facts and the same picture as
    the two separate calls."""
    alone, together = tmp_path / "alone.jpg", tmp_path / "together.jpg"
    render_thumbnail(small_video, alone)
    assert probe_video(small_video, thumbnail=together) == probe_video(small_video)
    with Image.open(alone) as a, Image.open(together) as b:
        assert (b.format, b.size) == ("JPEG", a.size)
        assert _mean_diff(a.convert("RGB"), b.convert("RGB")) < 0.5


@pytest.mark.parametrize("cut", [0, 2000, -10])
def test_probe_with_thumbnail_rejects_bad_files(
    small_video: pathlib.Path, tmp_path: pathlib.Path, cut: int
) -> None:
    path, thumb = tmp_path / "bad.mp4", tmp_path / "thumb.jpg"
    path.write_bytes(small_video.read_bytes()[:cut])
    with pytest.raises(InvalidMedia):
        probe_video(path, thumbnail=thumb)
    assert not thumb.exists()


def test_probe_rejects_jpeg(small_video: pathlib.Path, tmp_path: pathlib.Path) -> None:
    jpeg = tmp_path / "still.mp4"  # misleading suffix on purpose
    render_thumbnail(small_video, jpeg)
    with pytest.raises(InvalidMedia, match="still image"):
        probe_video(jpeg)


def test_probe_rejects_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InvalidMedia, match="cannot stat"):
        probe_video(tmp_path / "nope.mp4")


def test_probe_rejects_audio_only(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audio.m4a"
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=48000)
        stream.layout = "mono"
        for i in range(20):
            frame = AudioFrame(format="fltp", layout="mono", samples=1024)
            frame.planes[0].update(bytes(frame.planes[0].buffer_size))
            frame.sample_rate = 48000
            frame.pts = i * 1024
            frame.time_base = Fraction(1, 48000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with pytest.raises(InvalidMedia, match="no video stream"):
        probe_video(path)
