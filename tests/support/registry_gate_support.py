"""Gates whose registry is a database: the example registry imported into SQLite or PostgreSQL, a
configuration naming it, SQL to change it, and a stream reader that notes how a stream ended."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from aidr_gate.cli import main as cli_main
from support.environment import EXAMPLES
from support.gate_env import GateEnv, make_gate_env

LONG_PROMPT = " ".join(f"word{i}" for i in range(12))  # the demo echoes 12 words: 18 chunks


def import_examples(store: str) -> None:
    """Migrate *store* and import the example registry into it (the ``registry`` commands)."""
    assert cli_main(["registry", "migrate", store]) == 0
    assert cli_main(["registry", "import", str(EXAMPLES / "entities.yaml"), store]) == 0


def database_gate_env(
    root: Path, store: str, *, max_staleness: float = 60.0, **options: Any
) -> GateEnv:
    """:func:`make_gate_env` with ``registry:`` naming *store* through the cache."""
    env = make_gate_env(root, **options)
    text = env.config.read_text()
    setting = (
        f"registry:\n  store: {store!r}\n  max_staleness: {max_staleness}\n  negative_ttl: 30\n"
    )
    env.config.write_text(re.sub(r"^registry: .*\n", setting, text, count=1, flags=re.M))
    return env


def sqlite_exec(path: Path, sql: str, *params: Any) -> None:
    """Run one statement on a SQLite registry (the change log's triggers record it)."""
    with sqlite3.connect(path) as db:
        db.execute(sql, params)


@dataclass
class StreamWatch:
    """One streamed chat completion read in a thread: its chunks and how it ended."""

    client: openai.OpenAI
    model: str = "aurora-frontier"
    chunks: int = 0
    error: BaseException | None = None
    finished: bool = False
    decision_id: str | None = None
    first: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> StreamWatch:
        """Start reading; returns once the first chunk arrived (or the stream failed)."""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.first.wait(15), "no first chunk"
        return self

    def _run(self) -> None:
        try:
            raw = self.client.chat.completions.with_streaming_response.create(
                model=self.model,
                messages=[{"role": "user", "content": LONG_PROMPT}],
                stream=True,
            )
            with raw as response:
                self.decision_id = response.headers.get("x-aidr-decision-id")
                for _ in response.parse():
                    self.chunks += 1
                    self.first.set()
            self.finished = True
        except BaseException as exc:  # the test inspects it
            self.error = exc
        finally:
            self.first.set()

    def wait(self, timeout: float = 10.0) -> float:
        """Wait for the end; seconds waited."""
        started = time.monotonic()
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stream did not end"
        return time.monotonic() - started

    @property
    def code(self) -> str | None:
        """The error code the stream ended with (the gate's final event), if any."""
        body = getattr(self.error, "body", None)
        if isinstance(body, dict):
            code = body.get("code")
            return code if isinstance(code, str) else None
        return None
