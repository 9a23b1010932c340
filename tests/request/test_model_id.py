"""Where a request names its model: path patterns and their cache, and the JSON body."""

from __future__ import annotations

import pytest

from aidr_gate.errors import BodyNotForm, BodyNotJSON, HeaderRepeated, TokenMalformed
from aidr_gate.request.headers import single_header_value
from aidr_gate.request.identity import authorization_header
from aidr_gate.request.model_id import (
    MAX_CACHED_PATH,
    PATH_CACHE_SIZE,
    BufferedBody,
    ModelSources,
    model_from_json,
)
from aidr_gate.settings.middleware import default_settings


def sources() -> ModelSources:
    """The default model sources, with an empty path cache."""
    return default_settings().models


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v2/models/aurora/infer", "aurora"),
        ("/v2/models/aurora/versions/3/infer", "aurora"),
        ("/v2/models/aurora/generate_stream", "aurora"),
        ("/v2/models/aurora", "aurora"),
        ("/v1/models/aurora:predict", "aurora"),
        ("/v1/models/aurora", "aurora"),
        ("/v1/chat/completions", None),
        ("/v2/models/", None),
        ("/v2/models/a/b/c", None),
        ("", None),
    ],
)
def test_from_path_is_the_same_cold_and_warm(path: str, model: str | None) -> None:
    """The cached answer equals the computed one, for models found and paths without one."""
    models = sources()
    assert models.from_path(path) == model
    assert models.from_path(path) == model
    assert models._found == {path: model}


def test_path_cache_never_answers_for_another_path() -> None:
    """Each path gets its own answer; the cache stays bounded and skips long paths."""
    models = sources()
    for n in range(PATH_CACHE_SIZE + 10):
        assert models.from_path(f"/v2/models/m{n}/infer") == f"m{n}"
        assert models.from_path(f"/v1/models/m{n}") == f"m{n}"
        assert models.from_path("/v1/chat/completions") is None
        assert len(models._found) <= PATH_CACHE_SIZE
    long = "/v2/models/" + "x" * MAX_CACHED_PATH
    assert models.from_path(long) is None  # the model id is longer than MAX_MODEL_ID
    assert long not in models._found


def test_path_cache_is_not_part_of_equality() -> None:
    """Two sources with the same configuration are equal, whatever each has cached."""
    warm, cold = sources(), sources()
    warm.from_path("/v1/models/aurora")
    assert warm == cold
    assert hash(warm) == hash(cold)


def body(*parts: bytes) -> BufferedBody:
    """A complete body read in the given chunks."""
    return BufferedBody(list(parts), True)


@pytest.mark.parametrize("pad", [0, 100, 2100, 40_000], ids=["tiny", "short", "long", "huge"])
def test_repeated_model_key_is_refused_in_short_and_long_bodies(pad: int) -> None:
    """Two "model" keys in one object are refused whatever the body's size (short bodies are
    counted with bytes.count, long ones searched with a regex)."""
    filler = b"x" * pad
    repeated = b'{"model":"a","pad":"' + filler + b'","model":"b"}'
    with pytest.raises(BodyNotJSON):
        model_from_json(body(repeated), 1 << 20)
    escaped = b'{"model":"a","pad":"' + filler + b'","\\u006dodel":"b"}'
    with pytest.raises(BodyNotJSON):
        model_from_json(body(escaped), 1 << 20)
    # "model" in a nested object is no repeat of the top-level key; other repeats pass as before.
    nested = b'{"model":"a","pad":"' + filler + b'","messages":[{"model":"b"}]}'
    assert model_from_json(body(nested), 1 << 20) == "a"
    other = b'{"model":"a","pad":"' + filler + b'","x":1,"x":2}'
    assert model_from_json(body(other[:10], other[10:]), 1 << 20) == "a"


def test_a_header_read_for_the_app_is_found_in_any_case_and_never_twice() -> None:
    headers = [(b"X-Model-Id", b"aurora-mini"), (b"host", b"h")]
    assert single_header_value(headers, b"x-model-id", HeaderRepeated) == b"aurora-mini"
    with pytest.raises(HeaderRepeated, match="more than one x-model-id"):
        single_header_value([*headers, (b"x-model-id", b"other")], b"x-model-id", HeaderRepeated)
    with pytest.raises(BodyNotForm):
        single_header_value([(b"a", b"1"), (b"A", b"2")], b"a", BodyNotForm)
    with pytest.raises(TokenMalformed):
        authorization_header([(b"authorization", b"Bearer a"), (b"Authorization", b"Bearer b")])
