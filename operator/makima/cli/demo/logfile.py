"""The operator's log goes to a file while the demo runs, never over the live view."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


@contextlib.contextmanager
def logs_to_file(path: Path, level: int = logging.INFO) -> Iterator[None]:
    """Route every log record to `path` (not the terminal) while inside; put logging back after."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(level)
    access = logging.getLogger("aiohttp.access")  # one line per request: noise in the file
    saved_access = access.level
    access.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        access.setLevel(saved_access)
        handler.close()
