"""Exit codes shared by every subcommand."""

from __future__ import annotations

EXIT_OK = 0
EXIT_DENY = 1  # ``check``: the request is denied
EXIT_USAGE = 2  # usage or configuration error
EXIT_LOG = 3  # ``check``: allowed, but flagged for the log
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout left early (``... | head``)
