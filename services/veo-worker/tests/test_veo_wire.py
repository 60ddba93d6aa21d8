"""The Veo wire format without I/O: the request we send, how answers are read and classified."""

from __future__ import annotations

import json
from typing import Any

import pytest
from shared.schemas import RenderSpec
from veo_worker.backoff import backoff, poll_delay, retry_delay
from veo_worker.providers.base import InvalidRequest, ProviderError
from veo_worker.providers.veo_wire import (
    TransientError,
    check_spec,
    http_failure,
    operation_name,
    operation_state,
    read_json,
    request_body,
    retry_after_seconds,
)

PROMPT = 'A lighthouse at dusk, waves crashing — "cinematic", 35mm, [no text]'


def spec(**fields: Any) -> RenderSpec:
    values: dict[str, Any] = {
        "model": "veo-3.1-fast-generate-preview",
        "prompt": PROMPT,
        "aspect_ratio": "9:16",
        "resolution": "720p",
        "duration_seconds": 6,
        "generate_audio": True,
        **fields,
    }
    return RenderSpec.model_validate(values)


def test_the_request_carries_the_prompt_as_written_and_numbers_as_numbers() -> None:
    body = request_body(spec(negative_prompt="blurry", seed=42))
    assert body == {
        "instances": [{"prompt": PROMPT}],
        "parameters": {
            "aspectRatio": "9:16",
            "durationSeconds": 6,
            "sampleCount": 1,
            "resolution": "720p",
            "negativePrompt": "blurry",
            "seed": 42,
        },
    }
    assert isinstance(json.loads(json.dumps(body))["parameters"]["durationSeconds"], int)


def test_generate_audio_is_never_sent_and_veo_2_gets_no_resolution() -> None:
    for model in ("veo-3.0-generate-001", "veo-2.0-generate-001"):
        body = request_body(spec(model=model, duration_seconds=8, generate_audio=model[4] == "3"))
        assert "generateAudio" not in body["parameters"]
    veo2 = request_body(spec(model="veo-2.0-generate-001", duration_seconds=8))
    assert "resolution" not in veo2["parameters"] and "seed" not in veo2["parameters"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"resolution": "1080p", "duration_seconds": 6}, "duration_seconds"),
        ({"generate_audio": False}, "generate_audio"),
        ({"model": "veo-2.0-generate-001", "duration_seconds": 4}, "duration_seconds"),
        ({"model": "veo-2.0-generate-001", "resolution": "1080p", "duration_seconds": 8}, "res"),
        ({"model": "veo-2.0-generate-001", "seed": 1, "duration_seconds": 8}, "seed"),
    ],
)
def test_what_a_model_cannot_honour_is_refused_before_sending(
    fields: dict[str, Any], field: str
) -> None:
    values = {"generate_audio": False} if fields.get("model", "").startswith("veo-2") else {}
    with pytest.raises(InvalidRequest, match=field):
        check_spec(spec(**{**values, **fields}))


def test_a_supported_spec_passes() -> None:
    check_spec(spec(resolution="1080p", duration_seconds=8))
    check_spec(spec(model="veo-2.0-generate-001", duration_seconds=6, generate_audio=False))
    check_spec(spec(model="some-new-veo", generate_audio=False))  # unknown: Veo judges


def test_operation_states() -> None:
    assert operation_state({"name": "x"}).done is False  # proto3 leaves `done: false` out
    assert operation_state({"name": "x", "done": False}).done is False
    uri = "https://g.example/v1beta/files/a:download?alt=media"
    done = {
        "done": True,
        "response": {"generateVideoResponse": {"generatedSamples": [{"video": {"uri": uri}}]}},
    }
    assert operation_state(done).video_uri == uri


@pytest.mark.parametrize(
    ("body", "code", "text"),
    [
        (
            {"done": True, "response": {"generateVideoResponse": {
                "raiMediaFilteredCount": 1, "raiMediaFilteredReasons": ["celebrity likeness"]}}},
            "content_policy",
            "celebrity likeness",
        ),
        ({"done": True, "error": {"code": 3, "message": "bad prompt"}}, "invalid_request", "bad"),
        ({"done": True, "error": {"code": 13, "message": "oops"}}, "internal", "oops"),
        ({"done": True, "error": {"code": 14, "message": "busy"}}, "provider_unavailable", "busy"),
        ({"done": True, "error": {"code": 8, "message": "quota"}}, "quota_exceeded", "quota"),
        ({"done": True, "response": {"generateVideoResponse": {}}}, "internal", "no video"),
        ({"done": True, "response": {"generateVideoResponse": {"generatedSamples": []}}},
         "internal", "no video"),
        ({"done": True}, "internal", "without a response"),
        ({"done": True, "response": {"generateVideoResponse": {"generatedSamples": [
            {"video": {"uri": "file:///etc/passwd"}}]}}}, "internal", "no video"),
    ],
)  # fmt: skip
def test_done_operations_that_fail(body: dict[str, Any], code: str, text: str) -> None:
    with pytest.raises(ProviderError) as caught:
        operation_state(body)
    assert caught.value.info.code == code and text in caught.value.info.message


def test_malformed_json_is_transient_and_a_missing_name_is_final() -> None:
    with pytest.raises(TransientError, match="malformed JSON"):
        read_json(b'{"name": "x", "done": tru', "poll")
    with pytest.raises(TransientError):
        read_json(b"[1, 2]", "poll")
    with pytest.raises(ProviderError):
        operation_name({"nothing": True})
    assert operation_name({"name": "models/m/operations/abc"}) == "models/m/operations/abc"


def _google_error(status: int, name: str, **extra: Any) -> bytes:
    return json.dumps({"error": {"code": status, "status": name, "message": "m", **extra}}).encode()


def test_http_failures_are_classified() -> None:
    retry_info = {
        "details": [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"},
        ]
    }
    limited = http_failure(429, {"retry-after": "3"}, _google_error(429, "X", **retry_info), "s")
    assert isinstance(limited, TransientError) and limited.rate_limited
    assert limited.retry_after == 7.0  # the longer hint wins
    busy = http_failure(503, {}, _google_error(503, "UNAVAILABLE"), "s")
    assert isinstance(busy, TransientError) and busy.retry_after is None
    daily = {
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
             "violations": [{"quotaId": "PredictRequestsPerDayPerProject"}]},
        ]
    }  # fmt: skip
    spent = http_failure(429, {}, _google_error(429, "RESOURCE_EXHAUSTED", **daily), "s")
    assert isinstance(spent, ProviderError) and spent.info.code == "quota_exceeded"
    bad_key = {"details": [{"@type": "x.ErrorInfo", "reason": "API_KEY_INVALID"}]}
    key = http_failure(400, {}, _google_error(400, "INVALID_ARGUMENT", **bad_key), "s")
    assert isinstance(key, ProviderError) and key.info.code == "internal"
    assert "GEMINI_API_KEY" in key.info.message
    invalid = http_failure(400, {}, _google_error(400, "INVALID_ARGUMENT"), "s")
    assert isinstance(invalid, ProviderError) and invalid.info.code == "invalid_request"
    html = http_failure(502, {}, b"<html>bad gateway</html>", "s")
    assert isinstance(html, TransientError) and "bad gateway" in str(html)


def test_retry_hints() -> None:
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after_seconds(None, {"details": [{"@type": "a.RetryInfo", "retryDelay": "2.5s"}]})
    assert retry_after_seconds("99999") == 600.0  # capped


def test_backoff_grows_is_capped_is_jittered_and_honours_hints() -> None:
    samples = [backoff(n, 1.0, 8.0) for n in range(1, 8) for _ in range(50)]
    assert all(0 < s <= 8.0 for s in samples)
    assert len({round(s, 6) for s in samples}) > 100  # jittered
    assert all(4.0 <= backoff(10, 1.0, 8.0) <= 8.0 for _ in range(50))
    assert all(0.5 <= backoff(1, 1.0, 8.0) <= 1.0 for _ in range(50))
    assert retry_delay(1, 0.1, 1.0, hint=5.0) == 5.0
    assert all(0.8 * 10 <= poll_delay(30, 2.0, 10.0) <= 1.2 * 10 for _ in range(50))
