"""What a demo run is asked to do, and what it saw (tests look at both)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

EXAMPLES = Path(__file__).resolve().parents[4] / "examples"
DEFAULT_EXAMPLE = EXAMPLES / "directive.yaml"
DEFAULT_SEED = EXAMPLES / "demo-project"
DEFAULT_STATE_DIR = platformdirs.user_state_path("makima") / "demo"
DEFAULT_TIMEOUT = 120.0


@dataclass
class DemoOptions:
    state_dir: Path = DEFAULT_STATE_DIR
    timeout: float = DEFAULT_TIMEOUT
    keep: bool = False
    cluster: bool = False
    repo_url: str | None = None
    database_url: str | None = None
    namespace: str = "default"
    example: Path = DEFAULT_EXAMPLE
    seed: Path = DEFAULT_SEED
    live: bool | None = None  # None: a live view when the console is a terminal


@dataclass
class DemoResult:
    exit_code: int
    directive: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    repo: Path | None = None  # the bare repository, when it is on this machine
    elapsed: float = 0.0  # from apply to the end of the watch
