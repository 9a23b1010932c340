"""Records on standard output, one JSON object per line (for container log collectors)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from aidr_gate.audit.sinks import SinkError
from aidr_gate.settings.audit import StdoutSinkConfig


class StdoutSink:
    """Writes whole batches to file descriptor 1 from its own thread (a full pipe blocks only it)."""

    kind = "stdout"

    def __init__(self, config: StdoutSinkConfig, fd: int = 1) -> None:
        self.name = config.name
        self._fd = fd
        self._executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        """Start the writing thread."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"aidr-audit-{self.name}")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    async def send(self, lines: Sequence[bytes]) -> None:
        """Write the lines."""
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self._write, b"".join(lines)
            )
        except OSError as exc:
            raise SinkError(f"stdout: {exc}") from None

    async def close(self) -> None:
        """Stop the thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
