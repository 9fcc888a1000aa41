"""The scripted agent: deterministic, no model key. For tests, benchmarks and the quickstart.

Run as `makima agent scripted [--script FILE]` (or `python -m makima_testing.scripted`).
The script is YAML, read from `--script FILE`, else from the environment variable
`MAKIMA_AGENT_SCRIPT` (the YAML text itself, so it fits in a pod spec), else from the file
named by `MAKIMA_AGENT_SCRIPT_FILE`. The prompt arrives on stdin and is ignored. What to do
is decided by the runner's environment: `MAKIMA_TASK_KIND`, `MAKIMA_STEP`,
`MAKIMA_ATTEMPT`, `MAKIMA_GENERATION`, `MAKIMA_AGENT_MODE` (task|conflict) and
`MAKIMA_CONFLICT_FILES` (one path per line).

Format (every key optional; unknown keys are an error)::

    plan:                       # planning, generation 1: submitted as one batch
      - name: api
        title: Add the API
        description: …
        taskPlan: …             # or task_plan
      - name: docs
        title: Document it
        dependsOn: [api]        # or depends_on
        orderIndex: 1           # or order_index
    replan:                     # planning, generation N >= 2
      2:
        - {name: tests, title: Add tests, dependsOn: [api]}
      3: []                     # an empty list: `makima directive no-new-steps` (nothing new);
                                # a generation not listed submits nothing at all
    steps:                      # step tasks, by step name (MAKIMA_STEP)
      api:
        files: {src/api.py: "print('hi')\\n"}   # written relative to the repo root
        delete: [old.txt]
        expect_files: [README.md]   # exit 3 if one is missing (checks the workspace)
        output: ["working on it"]   # lines printed to stdout
        sleep: 0.2                  # seconds, before anything else
        fail_attempts: [1]          # exit 1 on these attempts (after printing, before writing)
        exit_code: 0                # exit status when not failing
        commit: false               # true: the agent commits itself (else the runner does)
        conflict:                   # conflict mode for this step's merges
          strategy: union           # ours | theirs | union | content | leave
          files: {a.txt: "merged\\n"}   # for strategy content
          exit_code: 0
    default: {…}                # a step entry used for steps not listed (else: no changes)
    conflict: {strategy: leave} # conflict mode when the step has none (and for completion)

Conflict strategies: `ours` keeps the branch being merged into, `theirs` the branch being
merged, `union` keeps both sides' lines (git merge-file --union), `content` writes the
given contents, `leave` changes nothing (the runner then fails listing the paths). The
resolved files are staged (`git add`); the runner commits the merge. The default is `leave`.

Planning submits through the same code path as `makima directive batch-add-steps`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from makima.core.protocol import StepSubmission

ENV_SCRIPT = "MAKIMA_AGENT_SCRIPT"
ENV_SCRIPT_FILE = "MAKIMA_AGENT_SCRIPT_FILE"

EXIT_BAD_SCRIPT = 2
EXIT_EXPECTATION = 3


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConflictScript(_Model):
    strategy: Literal["ours", "theirs", "union", "content", "leave"] = "leave"
    files: dict[str, str] = Field(default_factory=dict)
    exit_code: int = 0


class StepScript(_Model):
    files: dict[str, str] = Field(default_factory=dict)
    delete: list[str] = Field(default_factory=list)
    expect_files: list[str] = Field(default_factory=list)
    output: list[str] = Field(default_factory=list)
    sleep: float = Field(default=0, ge=0)
    fail_attempts: list[int] = Field(default_factory=list)
    exit_code: int = 0
    commit: bool = False
    conflict: ConflictScript | None = None


class Script(_Model):
    plan: list[dict[str, Any]] = Field(default_factory=list)
    replan: dict[int, list[dict[str, Any]]] = Field(default_factory=dict)
    steps: dict[str, StepScript] = Field(default_factory=dict)
    default: StepScript | None = None
    conflict: ConflictScript = Field(default_factory=ConflictScript)

    def planned(self, generation: int) -> list[StepSubmission]:
        raw = self.plan if generation <= 1 else self.replan.get(generation, [])
        return _STEPS.validate_python(raw)  # problems located as (index, field)

    def step(self, name: str | None) -> StepScript:
        if name and name in self.steps:
            return self.steps[name]
        return self.default or StepScript()


_STEPS: TypeAdapter[list[StepSubmission]] = TypeAdapter(list[StepSubmission])


class ScriptError(Exception):
    pass


def load_script(path: Path | None = None, env: Mapping[str, str] | None = None) -> Script:
    env = os.environ if env is None else env
    if path is not None:
        text, source = path.read_text(), str(path)
    elif env.get(ENV_SCRIPT):
        text, source = env[ENV_SCRIPT], f"${ENV_SCRIPT}"
    elif env.get(ENV_SCRIPT_FILE):
        text, source = Path(env[ENV_SCRIPT_FILE]).read_text(), env[ENV_SCRIPT_FILE]
    else:
        raise ScriptError(f"no script: pass --script FILE or set {ENV_SCRIPT} (YAML) or {ENV_SCRIPT_FILE}")
    try:
        data = yaml.safe_load(text) or {}
        return Script.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ScriptError(f"bad agent script {source}: {exc}") from exc


def _git(*args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], check=check, capture_output=True, input=input)


def _stage_exists(stage: int, path: str) -> bool:
    return _git("cat-file", "-e", f":{stage}:{path}", check=False).returncode == 0


def resolve_conflicts(spec: ConflictScript, files: list[str], root: Path) -> list[str]:
    """Apply the strategy to each file (cwd = repo root); return the paths resolved."""
    resolved: list[str] = []
    if spec.strategy == "leave":
        return resolved
    for path in files:
        target = root / path
        if spec.strategy == "content":
            if path not in spec.files:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(spec.files[path])
        elif spec.strategy in ("ours", "theirs"):
            stage = 2 if spec.strategy == "ours" else 3
            if _stage_exists(stage, path):
                _git("checkout", f"--{spec.strategy}", "--", path)
            else:
                _git("rm", "-q", "--cached", "--ignore-unmatch", "--", path)
                target.unlink(missing_ok=True)
        else:  # union
            with tempfile.TemporaryDirectory() as tmp:
                parts = []
                for stage in (2, 1, 3):
                    p = Path(tmp) / str(stage)
                    p.write_bytes(_git("show", f":{stage}:{path}").stdout if _stage_exists(stage, path) else b"")
                    parts.append(str(p))
                merged = subprocess.run(["git", "merge-file", "-p", "--union", *parts], capture_output=True)
                target.write_bytes(merged.stdout)
        _git("add", "-A", "--", path)
        resolved.append(path)
    return resolved


def run_script(script: Script, env: Mapping[str, str], root: Path) -> int:
    kind = env.get("MAKIMA_TASK_KIND", "step")
    mode = env.get("MAKIMA_AGENT_MODE", "task")
    step_name = env.get("MAKIMA_STEP") or None
    attempt = int(env.get("MAKIMA_ATTEMPT", "1"))
    generation = int(env.get("MAKIMA_GENERATION", "1"))

    if mode == "conflict":
        conflict = (script.step(step_name).conflict if step_name else None) or script.conflict
        files = [f for f in env.get("MAKIMA_CONFLICT_FILES", "").splitlines() if f]
        done = resolve_conflicts(conflict, files, root)
        print(f"scripted agent: conflict strategy {conflict.strategy}; resolved {len(done)}/{len(files)}")
        return conflict.exit_code

    if kind == "planning":
        from makima.cli.task import submit_steps_or_report

        try:
            steps = script.planned(generation)
        except ValidationError as exc:  # one line per problem, never a traceback in the task's status
            print(f"scripted agent: the script's plan is invalid ({exc.error_count()} problem(s)):", file=sys.stderr)
            for e in exc.errors():
                where = ".".join(str(x) for x in e["loc"])
                print(f"  • step {where}: {e['msg']}", file=sys.stderr)
            return EXIT_BAD_SCRIPT
        if not steps and generation >= 2 and generation in script.replan:
            return submit_steps_or_report([], final=True)
        if not steps:
            print(f"scripted agent: nothing to plan for generation {generation}")
            return 0
        return submit_steps_or_report(steps)

    step = script.step(step_name)
    for line in step.output:
        print(line, flush=True)
    if step.sleep:
        time.sleep(step.sleep)
    missing = [f for f in step.expect_files if not (root / f).exists()]
    if missing:
        print(f"scripted agent: expected files missing: {', '.join(missing)}", file=sys.stderr)
        return EXIT_EXPECTATION
    if attempt in step.fail_attempts:
        print(f"scripted agent: failing attempt {attempt} as scripted", file=sys.stderr)
        return 1
    for rel, content in step.files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    for rel in step.delete:
        (root / rel).unlink(missing_ok=True)
    if step.commit and (step.files or step.delete):
        _git("add", "-A")
        _git("commit", "-q", "-m", f"scripted agent: {step_name or 'step'}")
    print(f"scripted agent: step {step_name or '-'}: wrote {len(step.files)} file(s)")
    return step.exit_code


def main(script_path: Path | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    if not sys.stdin.isatty():
        sys.stdin.read()  # the prompt: drain it so the runner's write never blocks
    try:
        script = load_script(script_path, env)
    except (ScriptError, OSError) as exc:
        print(f"scripted agent: {exc}", file=sys.stderr)
        return EXIT_BAD_SCRIPT
    return run_script(script, env, Path.cwd())


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m makima_testing.scripted")
    parser.add_argument("--script", type=Path, default=None)
    sys.exit(main(parser.parse_args().script))
