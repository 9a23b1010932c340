"""Run a Python module or script with a file size limit (RLIMIT_FSIZE), for the tests of a gate
whose audit files can no longer grow: ``python tests/support/limited.py BYTES -m module args...`` or
``python tests/support/limited.py BYTES script.py args...``. Python ignores SIGXFSZ, so a write past the
limit fails with EFBIG (an OSError) instead of killing the process."""

from __future__ import annotations

import resource
import runpy
import sys


def main() -> None:
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    if sys.argv[2] == "-m":
        sys.argv = [sys.argv[3], *sys.argv[4:]]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[2:]
        sys.path.insert(0, str(__import__("pathlib").Path(sys.argv[0]).parent))
        runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
