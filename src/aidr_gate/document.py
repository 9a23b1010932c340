"""Reading YAML/JSON data files with errors that name the file, the key path and the line.

Packs, registries, catalogues and configuration are all data written by people. Every loader uses a
:class:`Checker` that collects every problem (not just the first), so one ``validate`` run lists
everything to fix, each as ``file:line: key.path: what is wrong``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, TypeVar

import orjson
import yaml
import yaml_rs

from aidr_gate.countries import COUNTRY_CODES
from aidr_gate.errors import ConfigError, Problem

T = TypeVar("T")

# Data files are small; anything this large is a mistake or an attack on the loader.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed data file and the line on which each key path starts."""

    file: str
    data: Any
    lines: Mapping[str, int]


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so Norway's ``NO`` stays a country."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _walk(node: yaml.Node, path: str, lines: dict[str, int], dupes: list[tuple[str, int]]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = join(path, key)
            if key in seen:
                dupes.append((child, key_node.start_mark.line + 1))
            seen.add(key)
            _walk(value_node, child, lines, dupes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, f"{path}[{index}]", lines, dupes)


def parse_document(text: str, file: str) -> Document:
    """Parse YAML (or JSON, a subset of it) text; raise :class:`ConfigError` naming the line."""
    try:
        # The reader checks the characters as it is built: a NUL is refused here, not later.
        loader = _Loader(text)
    except yaml.YAMLError as exc:
        raise ConfigError(Problem(file, "", f"not valid YAML/JSON: {exc}")) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return Document(file, None, {})
        lines: dict[str, int] = {}
        dupes: list[tuple[str, int]] = []
        _walk(node, "", lines, dupes)
        if dupes:
            raise ConfigError(
                [Problem(file, p, "key appears more than once", line) for p, line in dupes]
            )
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(
            Problem(file, "", f"not valid YAML/JSON: {exc.problem or exc.context}", line)
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(Problem(file, "", f"not valid YAML/JSON: {exc}")) from None
    finally:
        loader.dispose()
    return Document(file, data, lines)


def _read_text(path: str | Path, max_bytes: int) -> str:
    name = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(Problem(name, "", f"cannot read file: {exc.strerror or exc}")) from None
    if len(raw) > max_bytes:
        raise ConfigError(Problem(name, "", f"file is larger than {max_bytes} bytes"))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(Problem(name, "", f"not UTF-8 text (byte {exc.start})")) from None


def load_document(path: str | Path) -> Document:
    """Read and parse a data file; a missing, unreadable or oversized file is a :class:`ConfigError`."""
    return parse_document(_read_text(path, MAX_DOCUMENT_BYTES), str(path))


# Large data files (entity registries of 100k entities and more) may be this large.
MAX_LARGE_DOCUMENT_BYTES = 1024 * 1024 * 1024

# What the fast readers are not trusted with, so the reference reader takes the file: control
# characters (yaml_rs cuts a value at NUL), tags (it drops unknown ones), merge keys (it keeps
# ``<<`` as a key). A false alarm only costs speed.
_FAST_YAML_REFUSES = re.compile(
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|(?:^|[\s\[\]{},:])!|<<\s*:", re.M
)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"(\s*:)?')


class _LazyLines(Mapping[str, int]):
    """The key-path-to-line map of a document, computed only when a problem needs a line."""

    def __init__(self, text: str, file: str) -> None:
        self._text: str | None = text
        self._file = file
        self._lines: Mapping[str, int] = {}

    def _resolve(self) -> Mapping[str, int]:
        if self._text is not None:
            text, self._text = self._text, None
            self._lines = parse_document(text, self._file).lines
        return self._lines

    def __getitem__(self, key: str) -> int:
        return self._resolve()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._resolve()

    def __iter__(self) -> Iterator[str]:
        return iter(self._resolve())

    def __len__(self) -> int:
        return len(self._resolve())


def _count_keys(data: Any) -> int:
    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            count += len(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return count


def _fast_data(text: str, json: bool) -> dict[str, Any] | None:
    """The data of *text* read by a fast reader, or ``None`` when the reference reader must read it
    (anything the fast readers might read differently, every error, and duplicate keys)."""
    try:
        if json:
            data = orjson.loads(text)
            # orjson keeps the last of duplicate keys: count the keys in the text (every string
            # token, in order, is exact in JSON) against those it kept.
            keys = sum(1 for m in _JSON_STRING.finditer(text) if m.group(1) is not None)
            if keys != _count_keys(data):
                return None
        else:
            if _FAST_YAML_REFUSES.search(text):
                return None
            data = yaml_rs.loads(text, duplicate_key_policy=yaml_rs.DuplicateKeyPolicy.Error)
    except (orjson.JSONDecodeError, yaml_rs.YAMLDecodeError, ValueError, TypeError):
        return None
    return data if isinstance(data, dict) else None


def load_large_document(path: str | Path, max_bytes: int = MAX_LARGE_DOCUMENT_BYTES) -> Document:
    """Like :func:`load_document`, for large files: a fast reader (orjson for ``.json``, yaml_rs,
    YAML 1.2 core schema, otherwise) reads the data, and lines are found only when a problem is
    recorded. Whatever the fast reader would read differently or refuses, the reference reader
    reads (its errors, with their lines, are the ones reported)."""
    name = str(path)
    text = _read_text(path, max_bytes)
    data = _fast_data(text, name.lower().endswith(".json"))
    if data is None:
        return parse_document(text, name)
    return Document(name, data, _LazyLines(text, name))


def join(path: str, key: str | int) -> str:
    """Extend a key path: ``join("rules[2]", "when")`` is ``rules[2].when``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


_IDENT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_REASON = re.compile(r"^[A-Z][A-Z0-9_]{1,63}$")


class Checker:
    """Typed reads of a parsed document that record problems instead of raising on the first one."""

    IDENT = _IDENT
    REASON = _REASON

    def __init__(self, document: Document) -> None:
        self.document = document
        self.problems: list[Problem] = []

    # -- recording -------------------------------------------------------------------------------

    def _line(self, path: str) -> int | None:
        lines = self.document.lines
        probe = path
        while probe:
            if probe in lines:
                return lines[probe]
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return lines.get("")

    def error(self, path: str, message: str) -> None:
        """Record an error at *path*."""
        self.problems.append(Problem(self.document.file, path, message, self._line(path)))

    def warn(self, path: str, message: str) -> None:
        """Record a warning at *path*: reported by ``validate``, does not stop loading."""
        self.problems.append(
            Problem(self.document.file, path, message, self._line(path), severity="warning")
        )

    @property
    def errors(self) -> list[Problem]:
        """The problems recorded so far that are errors."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        """The problems recorded so far that are warnings."""
        return [p for p in self.problems if p.severity == "warning"]

    def raise_if_errors(self) -> None:
        """Raise one :class:`ConfigError` holding every error recorded."""
        if self.errors:
            raise ConfigError(self.errors)

    # -- typed reads -----------------------------------------------------------------------------

    def mapping(
        self,
        value: Any,
        path: str,
        *,
        keys: Iterable[str] | None = None,
        required: Iterable[str] = (),
    ) -> dict[str, Any] | None:
        """A mapping with string keys; unknown keys (typos) and missing required keys are errors."""
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, not {_kind(value)}")
            return None
        result: dict[str, Any] = {}
        allowed = None if keys is None else set(keys)
        for key, item in value.items():
            if not isinstance(key, str):
                self.error(path, f"key {key!r} must be a string")
                continue
            if allowed is not None and key not in allowed:
                self.error(
                    join(path, key),
                    f"unknown key{did_you_mean(key, allowed)} (expected one of: {_list(allowed)})",
                )
                continue
            result[key] = item
        for key in required:
            if key not in value or value[key] is None:
                self.error(join(path, key) if path else key, "is required")
        return result

    def sequence(self, value: Any, path: str, *, allow_empty: bool = True) -> list[Any] | None:
        """A list; ``None`` and wrong types are errors."""
        if not isinstance(value, list):
            self.error(path, f"must be a list, not {_kind(value)}")
            return None
        if not value and not allow_empty:
            self.error(path, "must not be empty")
        return value

    def string(
        self,
        value: Any,
        path: str,
        *,
        pattern: re.Pattern[str] | None = None,
        choices: Iterable[str] | None = None,
        what: str = "",
    ) -> str | None:
        """A non-empty string, optionally matching *pattern* or one of *choices*."""
        if not isinstance(value, str) or not value.strip():
            self.error(path, f"must be a non-empty string, not {_kind(value)}")
            return None
        if choices is not None:
            options = list(choices)
            if value not in options:
                self.error(path, f"{value!r} is not one of: {', '.join(options)}")
                return None
        if pattern is not None and not pattern.match(value):
            self.error(path, f"{value!r} is not a valid {what or 'value'} ({pattern.pattern})")
            return None
        return value

    def ident(self, value: Any, path: str, what: str = "id") -> str | None:
        """A lower-case identifier (pack, rule, tier and group ids)."""
        return self.string(value, path, pattern=_IDENT, what=what)

    def reason(self, value: Any, path: str) -> str | None:
        """A reason code: upper-case letters, digits and underscores."""
        return self.string(value, path, pattern=_REASON, what="reason code")

    def country(self, value: Any, path: str) -> str | None:
        """An assigned ISO 3166-1 alpha-2 code, upper case."""
        if not isinstance(value, str):
            self.error(path, f"must be an ISO 3166-1 alpha-2 country code, not {_kind(value)}")
            return None
        if value not in COUNTRY_CODES:
            hint = " (use upper case)" if value.upper() in COUNTRY_CODES else ""
            self.error(path, f"{value!r} is not an ISO 3166-1 alpha-2 country code{hint}")
            return None
        return value

    def boolean(self, value: Any, path: str) -> bool | None:
        """A YAML boolean (``true``/``false``), never a truthy string."""
        if not isinstance(value, bool):
            self.error(path, f"must be true or false, not {_kind(value)}")
            return None
        return value

    def number(self, value: Any, path: str, *, minimum: float | None = None) -> float | None:
        """A finite number; strings like ``1e26`` (which YAML reads as text) are accepted."""
        number: float | None = None
        if isinstance(value, bool):
            number = None
        elif isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.replace("_", ""))
            except ValueError:
                number = None
        if number is None or not math.isfinite(number):
            self.error(path, f"must be a number, not {_kind(value)}")
            return None
        if minimum is not None and number < minimum:
            self.error(path, f"must be at least {minimum:g}, not {number:g}")
            return None
        return number

    def integer(self, value: Any, path: str, *, minimum: int | None = None) -> int | None:
        """A whole number (not a boolean)."""
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"must be a whole number, not {_kind(value)}")
            return None
        if minimum is not None and value < minimum:
            self.error(path, f"must be at least {minimum}, not {value}")
            return None
        return value

    def instant(self, value: Any, path: str) -> float | None:
        """A date (midnight UTC) or an ISO 8601 date-time, as seconds since the epoch."""
        parsed = parse_instant(value)
        if parsed is None:
            self.error(path, f"must be a date (YYYY-MM-DD) or ISO 8601 date-time, not {value!r}")
        return parsed

    def each(self, value: Any, path: str, read: Callable[[Any, str], T | None]) -> list[T] | None:
        """Read every item of a list with *read*; items that fail are dropped (and recorded)."""
        items = self.sequence(value, path)
        if items is None:
            return None
        out: list[T] = []
        for index, item in enumerate(items):
            got = read(item, join(path, index))
            if got is not None:
                out.append(got)
        return out


# The instants a UTC datetime can hold, 0001-01-01T00:00:00Z up to (not including) the year 10000.
# A time with an offset can fall outside (``9999-12-31T23:59:59-05:00`` is in the year 10000 UTC),
# and nothing could print it again: such a time is not read as one.
MIN_INSTANT = -62_135_596_800.0
END_INSTANT = 253_402_300_800.0


def parse_instant(value: object) -> float | None:
    """Seconds since the epoch for a date (00:00 UTC), a datetime or an ISO 8601 string; ``None``
    for anything else, and for a time outside the years 1 to 9999 in UTC."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        try:
            seconds = moment.timestamp()
        except (OverflowError, ValueError):
            return None
        return seconds if MIN_INSTANT <= seconds < END_INSTANT else None
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=UTC).timestamp()
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
        return parse_instant(moment)
    return None


def format_timestamp(seconds: float) -> str:
    """ISO 8601 in UTC with a ``Z`` and milliseconds, always with the time (decision times)."""
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_instant(seconds: float | None) -> str | None:
    """Like :func:`format_timestamp`, but dates at midnight print as dates (pack and agreement
    windows read as the dates they were written as)."""
    if seconds is None:
        return None
    if seconds % 86_400 == 0:
        return datetime.fromtimestamp(seconds, tz=UTC).date().isoformat()
    return format_timestamp(seconds)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'leeway'?"`` for the closest of *choices*; nothing when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _kind(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, str):
        return f"the text {value!r}" if len(value) < 40 else "a long text"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _list(items: Iterable[str]) -> str:
    return ", ".join(sorted(items))
