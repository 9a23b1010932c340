"""One exception tree: every public exception aidr_gate defines derives from ``AidrGateError``.

An exception may subclass a standard base as well, where callers catch it by that base (as
python-multipart's ``FileError(FormParserError, OSError)`` does); the test names those too.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import aidr_gate
from aidr_gate.audit.lock import AuditWriterBusy
from aidr_gate.audit.sinks import SinkError, SinkRejected
from aidr_gate.audit.spool import SpoolFull
from aidr_gate.errors import AidrGateError
from aidr_gate.replay.evidence import MissingEvidence
from aidr_gate.request.jwks import FetchError
from aidr_gate.request.keys import KeySetError
from aidr_gate.sidecar.upstream import UpstreamBroken


def _public_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class a module of the package defines under a public name."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(aidr_gate.__path__, "aidr_gate."):
        if info.name == "aidr_gate.__main__":
            continue  # runs the command line when imported
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
                and not name.startswith("_")
            ):
                found[f"{module.__name__}.{name}"] = obj
    return found


def test_every_public_exception_derives_from_the_root() -> None:
    found = _public_exceptions()
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, AidrGateError))
    assert outside == []
    # The walk reaches beyond errors.py: the exceptions the audit, key and replay modules define.
    for cls in (
        KeySetError,
        FetchError,
        AuditWriterBusy,
        SpoolFull,
        SinkError,
        SinkRejected,
        MissingEvidence,
        UpstreamBroken,
    ):
        assert f"{cls.__module__}.{cls.__name__}" in found


def test_standard_bases_callers_rely_on_are_kept() -> None:
    # A bad key file is a ValueError to code written before the tree took it in; a busy writer
    # and a full spool are OSErrors, caught where the audit store's own failures are.
    assert issubclass(KeySetError, ValueError)
    assert issubclass(FetchError, KeySetError)
    assert issubclass(AuditWriterBusy, OSError)
    assert issubclass(SpoolFull, OSError)
    assert issubclass(UpstreamBroken, OSError)  # the proxy's 502 for any failed exchange
    busy = AuditWriterBusy("held by pid 7")
    assert str(busy) == busy.message == "held by pid 7"
    assert SinkError("refused", delivered=3).delivered == 3
    assert SinkRejected("400", rejected=2).rejected == 2
    assert MissingEvidence("aidr.decision.at").why == "aidr.decision.at"
