"""The model id of a ``multipart/form-data`` request (OpenAI audio transcriptions, image edits).

The body is parsed with python-multipart, the parser Starlette and FastAPI (and so vLLM) use for
the same forms, and part names and values are decoded as Starlette decodes them (with the content
type's ``charset``), so the gate reads the ``model`` field as the app will. Only that field is kept; a
file part streams through the parser and is not copied. The form must hold exactly one ``model``
field, a plain field rather than a file: with two, the gate and the app could each read another.

Where parsers differ, the form is refused (400 ``FORM_AMBIGUOUS``) rather than read one way: a part
with two ``Content-Disposition`` headers (Starlette keeps the last, other parsers the first), an
RFC 5987 extended parameter such as ``name*=`` (python-multipart ignores it, RFC 5987 readers take
it over ``name``), a charset whose decoder fails in ways Starlette does not catch (``punycode``:
the app would answer 500).
"""

from __future__ import annotations

import codecs
import logging
import re

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from aidr_gate.errors import BodyIncomplete, BodyNotForm, BodyTooLarge, FormAmbiguous, ModelMissing
from aidr_gate.request.headers import single_header_value
from aidr_gate.request.model_id import MAX_MODEL_ID, BufferedBody, valid_model_id

FORM_TYPE = b"multipart/form-data"
# Each part costs a few microseconds of pure-Python parsing, on the event loop: 32 MiB of tiny parts
# would hold it for seconds. Starlette's own defaults accept 1,000 fields and 1,000 files.
MAX_PARTS = 2000
# python-multipart logs every malformed form as a warning: a caller could fill the host's logs. The
# gate answers 400 BODY_NOT_FORM and audits the refusal instead, so its parsers log nowhere: to a
# disabled logger outside the logging manager, which no logging configuration of the host can turn
# back on (dictConfig resets the children of every logger it names, "aidr_gate" included).
_QUIET = logging.Logger("aidr_gate.form_model.parser")
_QUIET.disabled = True
# A model id is at most MAX_MODEL_ID characters, at most four bytes each in UTF-8.
_MAX_FIELD_BYTES = MAX_MODEL_ID * 4
# An extended (RFC 2231/5987) parameter: ``name*=``, ``filename*0*=``... python-multipart drops
# them, other readers prefer them. Matched loosely (a ``*`` in any parameter name, even one inside
# a quoted value): a false match refuses a form, a missed one could let two parsers disagree.
_EXTENDED_PARAMETER = re.compile(rb";[^;=]*\*[^;=]*=")


def _decoded(raw: bytes, codec: str) -> str:
    """*raw* as Starlette decodes a part's name or value: with *codec*, else as latin-1.

    Starlette catches only ``UnicodeDecodeError`` and ``LookupError``; any other failure of the
    codec (``punycode`` raises a bare ``UnicodeError``) would be the app's 500: refused here.
    """
    try:
        return raw.decode(codec)
    except (UnicodeDecodeError, LookupError):  # LookupError: a codec that is not a text encoding
        return raw.decode("latin-1")
    except Exception:
        raise FormAmbiguous(f"the form's charset {codec!r} cannot decode its fields") from None


class _ModelFields:
    """Parser callbacks that keep the value of every part named ``model``, and nothing else."""

    def __init__(self, codec: str) -> None:
        self.codec = codec  # what the part names are decoded with
        self.values: list[bytearray] = []
        self.parts = 0
        self.file_named_model = False
        self.ended = False
        self._field = bytearray()
        self._value = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._current: bytearray | None = None

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise BodyNotForm(f"the form has more than {MAX_PARTS} parts")
        self._headers = []
        self._current = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers.append((bytes(self._field).lower(), bytes(self._value)))
        self._field, self._value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        dispositions = [
            value for header, value in self._headers if header == b"content-disposition"
        ]
        if len(dispositions) != 1:
            if dispositions:  # Starlette reads the last, other parsers the first
                raise FormAmbiguous("a form part has more than one Content-Disposition header")
            raise BodyNotForm("a form part has no Content-Disposition header")
        value = dispositions[0]
        if _EXTENDED_PARAMETER.search(value):
            raise FormAmbiguous(
                "a form part's Content-Disposition has an extended parameter (name*=)"
            )
        _, params = parse_options_header(value)
        name = params.get(b"name")
        if name is None:  # Starlette refuses such a form (400)
            raise BodyNotForm("a form part's Content-Disposition names no field")
        # Decoded, not compared as bytes: under another charset other bytes spell "model".
        if _decoded(name, self.codec) != "model":
            return
        if b"filename" in params:
            self.file_named_model = True
            return
        self._current = bytearray()
        self.values.append(self._current)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        current = self._current
        if current is not None and len(current) <= _MAX_FIELD_BYTES:
            current += data[start : min(end, start + _MAX_FIELD_BYTES + 1 - len(current))]

    def on_end(self) -> None:
        self.ended = True


def content_type_of(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The request's one content type; a repeated one is ambiguous and refused."""
    return single_header_value(headers, b"content-type", BodyNotForm)


def form_type(content_type: bytes | None) -> tuple[bytes, str]:
    """The boundary of a ``multipart/form-data`` content type, and the codec its names and values
    are decoded with (as Starlette picks it: ``charset``, UTF-8 by default, latin-1 when unknown);
    raises :class:`BodyNotForm`."""
    if content_type is None:
        raise BodyNotForm("this path needs a multipart/form-data body; no content-type was sent")
    kind, params = parse_options_header(content_type)
    if kind != FORM_TYPE:
        raise BodyNotForm(f"this path needs a multipart/form-data body, not {kind[:60]!r}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BodyNotForm("the multipart/form-data content type names no boundary")
    try:
        codec = codecs.lookup(params.get(b"charset", b"utf-8").decode("latin-1")).name
    except LookupError:
        codec = "latin-1"
    return boundary, codec


def model_from_form(body: BufferedBody, content_type: bytes | None, limit: int) -> str:
    """The ``model`` field of a complete multipart form body; raises a :class:`RequestError`."""
    if body.disconnected:
        raise BodyIncomplete("the client disconnected before sending the whole body")
    if not body.complete:
        raise BodyTooLarge(f"request body is larger than {limit} bytes")
    boundary, codec = form_type(content_type)
    fields = _ModelFields(codec)
    try:
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": fields.on_part_begin,
                "on_header_field": fields.on_header_field,
                "on_header_value": fields.on_header_value,
                "on_header_end": fields.on_header_end,
                "on_headers_finished": fields.on_headers_finished,
                "on_part_data": fields.on_part_data,
                "on_end": fields.on_end,
            },
        )
        parser.logger = _QUIET
        for chunk in body.chunks:
            parser.write(chunk)
        parser.finalize()
    except FormAmbiguous:
        raise
    except (MultipartParseError, ValueError) as exc:
        raise BodyNotForm(f"request body is not a valid multipart form: {exc}"[:200]) from None
    if not fields.ended:
        raise BodyNotForm("the multipart form ends before its closing boundary")
    if fields.file_named_model:
        raise BodyNotForm("the form's model field is a file, not a value")
    if len(fields.values) > 1:
        raise BodyNotForm("the form repeats its model field")
    if not fields.values:
        raise ModelMissing("request names no model")
    try:
        text = fields.values[0].decode(codec)
    except (UnicodeDecodeError, LookupError):
        text = ""  # Starlette would fall back to latin-1: refused rather than read another way
    except Exception:
        raise FormAmbiguous(f"the form's charset {codec!r} cannot decode its model field") from None
    valid = valid_model_id(text)
    if valid is None:
        raise ModelMissing("the model field must be a printable string of at most 256 characters")
    return valid
