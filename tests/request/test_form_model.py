"""The model field of a multipart form: read as Starlette reads it, refused when ambiguous."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import UploadFile
from starlette.requests import Request

from aidr_gate.errors import BodyIncomplete, BodyNotForm, BodyTooLarge, ConfigError, ModelMissing
from aidr_gate.request.form_model import MAX_PARTS, content_type_of, form_type, model_from_form
from aidr_gate.request.model_id import BufferedBody, valid_model_id
from aidr_gate.settings.loader import load_config
from aidr_gate.settings.middleware import MIDDLEWARE, default_settings
from support.environment import ROOT

LIMIT = 1 << 20
EXAMPLES = ROOT / "policies" / "examples"


def encoded(
    fields: list[tuple[str, str]] | None = None, files: dict[str, Any] | None = None
) -> tuple[bytes, bytes]:
    """A form body and its content type, as httpx (and so the openai SDK) encodes them."""
    request = httpx.Request("POST", "http://gate.test/", data=dict(fields or []), files=files)
    if fields and len({name for name, _ in fields}) < len(fields):  # repeated names: by hand
        request = httpx.Request("POST", "http://gate.test/", files=_as_parts(fields, files))
    return request.read(), request.headers["content-type"].encode()


def _as_parts(fields: list[tuple[str, str]], files: dict[str, Any] | None) -> list[Any]:
    parts: list[Any] = [(name, (None, value.encode())) for name, value in fields]
    return parts + list((files or {}).items())


def body_of(data: bytes, chunk: int | None = None) -> BufferedBody:
    if chunk is None:
        return BufferedBody([data], True)
    return BufferedBody([data[i : i + chunk] for i in range(0, len(data), chunk)], True)


AUDIO = {"file": ("speech.wav", b"RIFF" + bytes(range(256)) * 40, "audio/wav")}


@pytest.mark.parametrize("chunk", [None, 1, 7, 4096])
def test_the_model_field_is_found_wherever_it_sits(chunk: int | None) -> None:
    data, kind = encoded([("model", "whisper-large-v3"), ("language", "en")], AUDIO)
    assert model_from_form(body_of(data, chunk), kind, LIMIT) == "whisper-large-v3"
    after = httpx.Request(
        "POST",
        "http://gate.test/",
        files=[("file", AUDIO["file"]), ("model", (None, b"aurora-mini"))],
    )
    body = after.read()
    found = model_from_form(body_of(body, chunk), after.headers["content-type"].encode(), LIMIT)
    assert found == "aurora-mini"


@pytest.mark.parametrize(
    ("fields", "files", "error", "words"),
    [
        ([("language", "en")], AUDIO, ModelMissing, "names no model"),
        ([("model", "a"), ("model", "aurora-mini")], AUDIO, BodyNotForm, "repeats"),
        ([], {"model": ("m.txt", b"aurora-mini", "text/plain")}, BodyNotForm, "is a file"),
        ([("model", "x" * 300)], AUDIO, ModelMissing, "at most 256"),
        ([("model", "bad\nid")], AUDIO, ModelMissing, "printable"),
    ],
    ids=["no-model", "two-models", "model-is-a-file", "too-long", "not-printable"],
)
def test_ambiguous_or_missing_models_are_refused(
    fields: list[tuple[str, str]], files: dict[str, Any] | None, error: type, words: str
) -> None:
    data, kind = encoded(fields, files)
    with pytest.raises(error, match=words):
        model_from_form(body_of(data), kind, LIMIT)


def test_a_model_that_is_not_utf8_is_refused() -> None:
    data, kind = encoded([("model", "MODEL")], AUDIO)
    data = data.replace(b"MODEL", b"\xff\xfe")
    with pytest.raises(ModelMissing):
        model_from_form(body_of(data), kind, LIMIT)


@pytest.mark.parametrize(
    ("content_type", "words"),
    [
        (None, "no content-type"),
        (b"application/json", "not b'application/json'"),
        (b"multipart/form-data", "no boundary"),
        (b"multipart/form-data; boundary=", "no boundary"),
    ],
)
def test_content_types_that_are_not_forms(content_type: bytes | None, words: str) -> None:
    with pytest.raises(BodyNotForm, match=words):
        form_type(content_type)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[: len(d) // 2],  # cut short: no closing boundary
        lambda d: b"garbage " + d,
        lambda d: d.replace(b"\r\n", b"\n"),
        lambda d: b"",
    ],
    ids=["truncated", "prefixed", "bare-newlines", "empty"],
)
def test_malformed_forms_are_refused(mangle: Any) -> None:
    data, kind = encoded([("model", "aurora-mini")], AUDIO)
    with pytest.raises((BodyNotForm, ModelMissing)):
        model_from_form(body_of(mangle(data)), kind, LIMIT)


def test_incomplete_and_oversized_bodies() -> None:
    data, kind = encoded([("model", "aurora-mini")], AUDIO)
    with pytest.raises(BodyIncomplete):
        model_from_form(BufferedBody([data[:10]], False, disconnected=True), kind, LIMIT)
    with pytest.raises(BodyTooLarge):
        model_from_form(BufferedBody([data], False), kind, 100)


def test_content_type_of_refuses_a_repeat() -> None:
    assert content_type_of([(b"content-type", b"a")]) == b"a"
    assert content_type_of([(b"Content-Type", b"b")]) == b"b"
    assert content_type_of([(b"host", b"h")]) is None
    with pytest.raises(BodyNotForm, match="more than one"):
        content_type_of([(b"content-type", b"a"), (b"content-type", b"b")])


def starlette_model(data: bytes, content_type: bytes) -> object:
    """What a Starlette (or FastAPI, or vLLM) app reads as the form's ``model``."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": data, "more_body": False}

    async def read() -> object:
        scope = {"type": "http", "method": "POST", "headers": [(b"content-type", content_type)]}
        async with Request(scope, receive).form() as form:
            value = form.get("model")
            return "<file>" if isinstance(value, UploadFile) else value

    return asyncio.run(read())


names = st.sampled_from(["model", "language", "prompt", "temperature", "file"])
values = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30
) | st.sampled_from(["whisper-1", "aurora-mini", "x" * 257])


@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(st.tuples(names, values), max_size=5),
    chunk=st.none() | st.integers(min_value=1, max_value=64),
)
def test_the_gate_reads_the_form_as_starlette_does(
    fields: list[tuple[str, str]], chunk: int | None
) -> None:
    data, kind = encoded(fields, AUDIO)
    models = [value for name, value in fields if name == "model"]
    if len(models) == 1 and valid_model_id(models[0]) is not None:
        assert model_from_form(body_of(data, chunk), kind, LIMIT) == models[0]
        assert starlette_model(data, kind) == models[0]  # the app reads the same model
    else:  # none, a repeat the app might read otherwise, or no usable id: refused
        with pytest.raises((ModelMissing, BodyNotForm)):
            model_from_form(body_of(data, chunk), kind, LIMIT)


def test_form_paths_are_configurable_and_never_also_json(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    base = f"policy: {{pack: aidr-2025-01}}\nregistry: {EXAMPLES}/entities.yaml\n"
    base += f"catalog: {EXAMPLES}/models.yaml\n"
    config.write_text(
        base + "middleware:\n  form_model_paths: [/v1/uploads]\n  max_form_bytes: 4096\n"
    )
    models = load_config(config).get(MIDDLEWARE).models
    assert models.max_form_bytes == 4096
    assert default_settings().models.max_form_bytes == 32 * 1024 * 1024
    assert models.wants_form("POST", "/v1/uploads")
    assert not models.wants_form("POST", "/v1/audio/transcriptions")
    assert not models.wants_form("GET", "/v1/uploads")
    assert default_settings().models.wants_form("POST", "/v1/audio/transcriptions")
    config.write_text(base + "middleware:\n  form_model_paths: [/v1/chat/completions, uploads]\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    text = str(info.value)
    assert "middleware.form_model_paths[0]" in text
    assert "also in json_model_paths" in text
    assert "must start with '/'" in text


def test_a_form_of_too_many_parts_is_refused_early() -> None:
    boundary = b"XyZb0undary"
    part = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n'
    model = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\nm1\r\n'
    end = b"--" + boundary + b"--\r\n"
    kind = b"multipart/form-data; boundary=" + boundary
    fine = model + part * (MAX_PARTS - 1) + end
    assert model_from_form(body_of(fine), kind, 1 << 30) == "m1"
    with pytest.raises(BodyNotForm, match=f"more than {MAX_PARTS} parts"):
        model_from_form(body_of(model + part * 100_000 + end), kind, 1 << 30)


def raw_form(parts: list[tuple[bytes, bytes]], charset: str | None) -> tuple[bytes, bytes]:
    """A form written byte by byte (names and values in any encoding), and its content type."""
    body = b"".join(
        b'--XyZzy\r\nContent-Disposition: form-data; name="%b"\r\n\r\n%b\r\n' % part
        for part in parts
    )
    kind = b"multipart/form-data; boundary=XyZzy"
    if charset is not None:
        kind += b"; charset=" + charset.encode()
    return body + b"--XyZzy--\r\n", kind


def test_a_name_that_spells_model_in_the_forms_charset_is_the_model_field() -> None:
    """UTF-7 spells "model" as ``+AG0-odel``: Starlette reads that part as the model (the last
    one wins), so a gate comparing bytes would decide on the other part."""
    data, kind = raw_form([(b"model", b"aurora-mini"), (b"+AG0-odel", b"aurora-frontier")], "utf-7")
    assert starlette_model(data, kind) == "aurora-frontier"
    with pytest.raises(BodyNotForm, match="repeats"):
        model_from_form(body_of(data), kind, LIMIT)
    alone, kind = raw_form([(b"+AG0-odel", b"aurora-frontier")], "utf-7")
    assert model_from_form(body_of(alone), kind, LIMIT) == "aurora-frontier"


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.tuples(
            st.sampled_from([b"model", b"+AG0-odel", b"mod\xe9l", b"m\x00o\x00", b"prompt"]),
            st.binary(max_size=12) | st.sampled_from([b"aurora-mini", b"aur\xc3\xa9", b"+AG0-"]),
        ),
        max_size=4,
    ),
    charset=st.sampled_from(
        [None, "utf-8", "UTF-7", "utf-16", "latin-1", "cp1252", "hex", "no-such-charset"]
    ),
)
def test_whatever_model_the_gate_reads_from_a_form_the_app_reads_too(
    parts: list[tuple[bytes, bytes]], charset: str | None
) -> None:
    data, kind = raw_form(parts, charset)
    try:
        found = model_from_form(body_of(data), kind, LIMIT)
    except (ModelMissing, BodyNotForm):
        return  # refused: the app never sees the request
    assert starlette_model(data, kind) == found


def test_a_malformed_form_leaves_no_log_line_whatever_the_host_configures() -> None:
    """In a process of its own: a host that configures the "aidr_gate" logger with dictConfig (which
    resets every child logger) still gets no line from the multipart parser."""
    script = """
import logging.config, sys
sys.path[:0] = sys.argv[1:]
from aidr_gate.errors import BodyNotForm
from aidr_gate.request.form_model import form_type, model_from_form
import test_form_model as t
logging.config.dictConfig({
    "version": 1,
    "handlers": {"err": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
    "loggers": {"aidr_gate": {"level": "DEBUG"}},
    "root": {"level": "DEBUG", "handlers": ["err"]},
})
logging.getLogger("aidr_gate.check").warning("the host's handler works")
data, kind = t.encoded([("model", "aurora-mini")], t.AUDIO)
boundary, _ = form_type(kind)
broken = data.replace(b"--" + boundary + b"\\r\\n", b"--" + boundary[:-1] + b"!\\r\\n", 1)
try:
    model_from_form(t.body_of(broken), kind, t.LIMIT)
except BodyNotForm:
    print("refused")
"""
    here = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-c", script, str(here), str(here.parent)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "refused", done.stderr
    assert done.stderr.strip() == "the host's handler works", done.stderr


def test_a_malformed_form_leaves_no_log_line(caplog: pytest.LogCaptureFixture) -> None:
    data, kind = encoded([("model", "aurora-mini")], AUDIO)
    boundary, _ = form_type(kind)
    broken = data.replace(b"--" + boundary + b"\r\n", b"--" + boundary[:-1] + b"!\r\n", 1)
    with caplog.at_level(logging.DEBUG), pytest.raises(BodyNotForm):
        model_from_form(body_of(broken), kind, LIMIT)
    assert not [r for r in caplog.records if "multipart" in r.name or "form_model" in r.name], (
        caplog.text
    )
