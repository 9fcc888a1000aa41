"""`makima demo`: the quickstart — the example directive, from goal to pull request, locally.

What it starts, all in this process unless `--cluster` is given:

- the **sandbox cluster** (`makima_testing.sandbox`, a test double of the Kubernetes API; its Jobs
  run as local processes), with the CRDs applied;
- the **embedded PostgreSQL** under the demo's state dir (reused by the next run; stopped
  at the end if this run started it), unless `--database-url` names a server;
- **the operator** (`makima.control.runtime.run_operator`: kopf, the task API, the store);
- a **bare git repository** seeded from `examples/demo-project/` (one commit on `main`),
  the "remote" the directive works on.

Then it applies `examples/directive.yaml` (scripted agent, six steps, a diamond) with
`spec.repository.url` pointed at that repository, shows the step tree live
(`views.directive_tree`) and ends with the pull request: URL, branch, merged commits and
diffstat, read from the bare repository, plus the `kubectl` commands that show the same
(`--keep` leaves everything running for them until Ctrl-C).

The operator's logs go to `<state dir>/operator.log`, never over the live view. The exit
code is 0 only when the directive reached Completed within `--timeout`.

With `--cluster`, nothing is started: the example is applied to the cluster `KUBECONFIG`
points at (the chart must be installed) and watched there; `--repo-url` must then be a
repository the cluster's Jobs can reach.

The demo talks to the API with the official client as a person's kubectl would; it is a
client of the cluster, like the people commands, not part of the operator's gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs
import typer
import yaml
from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from makima.core.models import GROUP
from makima.core.naming import LABEL_DIRECTIVE, LABEL_STEP

if TYPE_CHECKING:
    from makima_testing.sandbox import Sandbox

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
DEFAULT_EXAMPLE = EXAMPLES / "directive.yaml"
DEFAULT_SEED = EXAMPLES / "demo-project"
DEFAULT_STATE_DIR = platformdirs.user_state_path("makima") / "demo"
DIRECTIVES, STEPS = "directives", "directivesteps"
TERMINAL_PHASES = ("Completed", "Failed")
POLL_SECONDS = 0.25
_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "makima demo",
    "GIT_AUTHOR_EMAIL": "demo@makima.invalid",
    "GIT_COMMITTER_NAME": "makima demo",
    "GIT_COMMITTER_EMAIL": "demo@makima.invalid",
}


log = logging.getLogger(__name__)


class DemoError(RuntimeError):
    """Something the person can fix (missing git, no CRD on the cluster, ...)."""


class Interrupted(DemoError):
    """Ctrl-C (or SIGTERM) while the demo ran: everything it started is stopped."""


@contextlib.contextmanager
def interrupts() -> Iterator[asyncio.Event]:
    """An event set by SIGINT/SIGTERM while inside.

    kopf installs its own SIGINT handler (it would stop the operator and leave the demo
    puzzled); ours, installed after it, lets the demo stop everything in order instead.
    """
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, event.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    try:
        yield event
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


@dataclass
class DemoOptions:
    state_dir: Path = DEFAULT_STATE_DIR
    timeout: float = 120.0
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


# -- git ------------------------------------------------------------------------------------


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **_GIT_IDENTITY, "GIT_TERMINAL_PROMPT": "0"}
    try:
        res = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise DemoError(f"git {' '.join(args)} failed: {exc.stderr.strip()}") from exc
    return res.stdout.strip()


def create_origin(bare: Path, seed: Path, base: str) -> Path:
    """A fresh bare repository holding `seed` as one commit on `base`."""
    if shutil.which("git") is None:
        raise DemoError("git is not on PATH; the demo needs it (the runner works on real repositories)")
    if not seed.is_dir():
        raise DemoError(f"the example project {seed} is missing (run the demo from a clone: `make demo`)")
    shutil.rmtree(bare, ignore_errors=True)
    bare.parent.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "--bare", "-b", base, str(bare))
    with tempfile.TemporaryDirectory(prefix="makima-demo-seed-") as tmp:
        work = Path(tmp) / "work"
        shutil.copytree(seed, work, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        git("init", "-q", "-b", base, cwd=work)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "Initial commit: hello-project", cwd=work)
        git("push", "-q", str(bare), f"HEAD:refs/heads/{base}", cwd=work)
    return bare


def local_path(repo_url: str) -> Path | None:
    """The bare repository behind a file:// URL or a plain path, if it is on this machine."""
    from makima.dataplane.runner.hosts import local_repo_path

    path = local_repo_path(repo_url)
    return path if path is not None and path.exists() else None


def pull_request_record(bare: Path, branch: str) -> tuple[int, dict[str, Any]] | None:
    """The newest local pull request (refs/makima/pulls/<n>/meta) whose head is `branch`."""
    refs = git("--git-dir", str(bare), "for-each-ref", "--format=%(refname)", "refs/makima/pulls/")
    found: tuple[int, dict[str, Any]] | None = None
    for ref in refs.splitlines():
        if not ref.endswith("/meta"):
            continue
        meta = json.loads(git("--git-dir", str(bare), "cat-file", "blob", ref))
        if meta.get("head") == branch and (found is None or int(meta["number"]) > found[0]):
            found = (int(meta["number"]), meta)
    return found


# -- the cluster, as a client sees it ------------------------------------------------------


class ClusterClient:
    """What the demo asks of a cluster, through `kube.UserKube` (call with `asyncio.to_thread`)."""

    def __init__(self, kubeconfig: str | None) -> None:
        from makima.control.kube import UserKube

        cfg = client_configuration(kubeconfig)
        self.kube = UserKube(cfg)
        self.host: str = self.kube.host

    def close(self) -> None:
        self.kube.close()

    def apply_crds(self, crds: dict[str, dict[str, Any]]) -> None:
        self.kube.ensure_crds(list(crds.values()))

    def check_crds(self) -> None:
        missing = self.kube.missing_crds([f"{plural}.{GROUP}" for plural in (DIRECTIVES, STEPS)])
        if missing:
            raise DemoError(
                f"the cluster at {self.host} has no {', '.join(missing)} CRD: install the chart first "
                "(helm install makima charts/makima -n makima-system --create-namespace)"
            )

    def directive(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.kube.get_directive(namespace, name)

    def steps(self, namespace: str, directive: str) -> list[dict[str, Any]]:
        return self.kube.list_steps(namespace, directive)

    def replace_directive(self, namespace: str, body: dict[str, Any], wait: float = 60.0) -> bool:
        """Create the directive; an existing one of that name is deleted first (and waited for).

        Returns whether one was replaced."""
        name = body["metadata"]["name"]
        existed = self.kube.delete_directive(namespace, name)
        if existed:
            deadline = time.monotonic() + wait
            while self.directive(namespace, name) is not None:
                if time.monotonic() > deadline:
                    raise DemoError(f"directive {namespace}/{name} still exists {wait:.0f} s after deleting it")
                time.sleep(0.2)
        self.kube.create_directive(namespace, body)
        return existed


def client_configuration(kubeconfig: str | None) -> Any:
    """An API client from an explicit kubeconfig (the sandbox's, or KUBECONFIG for --cluster)."""
    from makima.control.kube import load_kubeconfig

    return load_kubeconfig(kubeconfig)


# -- pieces started for the local demo ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def logs_to_file(path: Path, level: int = logging.INFO) -> Iterator[None]:
    """Route every log record to `path` (not the terminal) while the demo runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(level)
    access = logging.getLogger("aiohttp.access")
    saved_access = access.level
    access.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        access.setLevel(saved_access)
        handler.close()


@contextlib.contextmanager
def env_var(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


class Stages:
    """One line per start-up stage, with its duration."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @contextlib.contextmanager
    def stage(self, what: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        took = time.monotonic() - started
        self.console.print(Text.assemble(("  ✓ ", "green"), what, (f"  {took:.1f} s", "dim")))


@dataclass
class LocalRun:
    kubeconfig: Path
    operator_task: asyncio.Task[None]
    api_url: str = ""
    reader_token_file: Path | None = None  # for `makima logs` (MAKIMA_READER_TOKEN)


READER_TOKEN_FILE = "reader-token"
SECOND_EXAMPLE_FILE = "second-directive.yaml"


def write_reader_token(state: Path) -> tuple[str, Path]:
    """A fresh reader token for this run's operator, kept mode 0600 in the state dir."""
    import secrets

    token = secrets.token_urlsafe(32)
    path = state / READER_TOKEN_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, path


async def stop_operator(task: asyncio.Task[None], stop: asyncio.Event, sandbox: Sandbox) -> None:
    """Set the stop flag, then stop the sandbox too, and wait (up to 30 s) for kopf to end.

    kopf waits up to 5 s for every task created after it started, and in this loop that
    includes the sandbox's handlers of the operator's idle keep-alive connections: stopping
    the sandbox (once kopf has cancelled its watchers) closes them at once.
    """
    stop.set()
    await asyncio.wait({task}, timeout=0.3)
    if not task.done():
        await sandbox.stop()
        await asyncio.wait({task}, timeout=30)
    if not task.done():
        task.cancel()
    # kopf ends its own tasks by cancellation when the stop flag is set.
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


@contextlib.asynccontextmanager
async def local_stack(opts: DemoOptions, console: Console) -> AsyncIterator[LocalRun]:
    """Embedded PostgreSQL (or `--database-url`), the sandbox with the CRDs, the operator."""
    from makima.control.config import OperatorSettings
    from makima.control.runtime import run_operator
    from makima.control.store.embedded import EmbeddedError, EmbeddedPostgres, embedded_data_dir
    from makima.core.crds import all_crds
    from makima_testing.sandbox import Sandbox

    stages = Stages(console)
    state = opts.state_dir
    embedded: EmbeddedPostgres | None = None
    stop_embedded = False
    dsn = opts.database_url
    if dsn is None:
        with stages.stage(f"PostgreSQL (embedded, {embedded_data_dir(state)})"):
            embedded = EmbeddedPostgres(embedded_data_dir(state))
            stop_embedded = not await asyncio.to_thread(embedded.is_running)
            try:
                dsn = await asyncio.to_thread(embedded.start)
            except EmbeddedError as exc:
                raise DemoError(f"the embedded PostgreSQL did not start: {exc}") from exc
    try:
        sandbox_dir = state / "sandbox"
        shutil.rmtree(sandbox_dir, ignore_errors=True)
        kubeconfig = state / "kubeconfig"
        with stages.stage("sandbox cluster (a test double of the Kubernetes API) with the makima CRDs"):
            sandbox = await Sandbox(workdir=sandbox_dir, kubeconfig=kubeconfig).start()
        try:
            client = ClusterClient(str(kubeconfig))
            try:
                await asyncio.to_thread(client.apply_crds, all_crds())
            finally:
                client.close()
            port = _free_port()
            reader_token, token_file = write_reader_token(state)
            settings = OperatorSettings(
                database_url=dsn,
                state_dir=state,
                api_listen=f"127.0.0.1:{port}",
                api_url=f"http://127.0.0.1:{port}",
                reader_token=reader_token,  # so that `makima logs` works against the demo
                retry_base_seconds=1.0,
                retry_max_seconds=10.0,
                # The person's MAKIMA_* environment must not bend the demo's operator.
                namespaces=[],
                lease_name=None,  # one operator, always active
                poll_only=False,
            )
            stop, ready = asyncio.Event(), asyncio.Event()
            with env_var("KUBECONFIG", str(kubeconfig)), stages.stage(f"operator (API on 127.0.0.1:{port})"):
                task = asyncio.create_task(
                    run_operator(settings, kubeconfig=str(kubeconfig), stop_flag=stop, ready_flag=ready),
                    name="makima-operator",
                )
                waiter = asyncio.create_task(ready.wait())
                try:
                    done, _ = await asyncio.wait({waiter, task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
                    if task in done:
                        task.result()  # raises the start-up error
                        raise DemoError("the operator stopped during start-up")
                    if waiter not in done:
                        raise DemoError("the operator did not become ready in 60 s")
                except BaseException:
                    waiter.cancel()
                    await stop_operator(task, stop, sandbox)
                    raise
            try:
                with env_var("KUBECONFIG", str(kubeconfig)):
                    yield LocalRun(kubeconfig, task, f"http://127.0.0.1:{port}", token_file)
            finally:
                log.info("demo: stopping the operator")
                await stop_operator(task, stop, sandbox)
        finally:
            log.info("demo: stopping the sandbox")
            await sandbox.stop()
    finally:
        if embedded is not None and stop_embedded:
            log.info("demo: stopping the embedded PostgreSQL")
            await asyncio.to_thread(embedded.stop)
        log.info("demo: stopped")


# -- the live view ----------------------------------------------------------------------------


def _step_name(step: dict[str, Any]) -> str:
    return str((step.get("metadata", {}).get("labels") or {}).get(LABEL_STEP) or step["metadata"]["name"])


def fallback_view(directive: dict[str, Any], steps: list[dict[str, Any]], now: datetime) -> RenderableType:
    """A plain table, used when `makima.cli.views` is not available."""
    status = directive.get("status") or {}
    table = Table(
        title=f"{directive['metadata']['name']}: {status.get('phase', 'Pending')} {status.get('progress', '')}"
    )
    for col in ("step", "phase", "order", "attempts", "depends on"):
        table.add_column(col)
    for s in sorted(steps, key=lambda s: (s.get("spec", {}).get("orderIndex", 0), _step_name(s))):
        st = s.get("status") or {}
        deps = ", ".join(s.get("spec", {}).get("dependsOn") or [])
        table.add_row(
            _step_name(s),
            st.get("phase", "Pending"),
            str(s["spec"].get("orderIndex", "")),
            str(st.get("attempts", 0)),
            deps,
        )
    return table


def render(directive: dict[str, Any], steps: list[dict[str, Any]]) -> RenderableType:
    now = datetime.now(UTC)
    try:
        from makima.cli.views import directive_tree
    except ImportError:
        return fallback_view(directive, steps, now)
    return directive_tree(directive, steps, now)


def _phase(directive: dict[str, Any]) -> str:
    status = directive.get("status") or {}
    return f"{status.get('phase', 'Pending')} {status.get('progress', '')}".strip()


def _changes(seen: dict[str, str], directive: dict[str, Any], steps: list[dict[str, Any]], elapsed: float) -> list[str]:
    """Lines for what changed since the last poll (the view when the console is not a terminal)."""
    lines = []
    key = _phase(directive)
    if seen.get("") != key:
        seen[""] = key
        lines.append(f"[{elapsed:5.1f}s] directive {directive['metadata']['name']}: {key}")
    for s in sorted(steps, key=lambda s: (s.get("spec", {}).get("orderIndex", 0), _step_name(s))):
        name, phase = _step_name(s), (s.get("status") or {}).get("phase", "Pending")
        if seen.get(name) != phase:
            seen[name] = phase
            lines.append(f"[{elapsed:5.1f}s]   step {name}: {phase}")
    return lines


async def watch(
    client: ClusterClient,
    namespace: str,
    name: str,
    timeout: float,
    console: Console,
    live: bool,
    operator_task: asyncio.Task[None] | None = None,
    interrupted: asyncio.Event | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    """Poll the directive and its steps until a terminal phase or the timeout; (directive, steps, timed_out)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    directive: dict[str, Any] = {"metadata": {"name": name}}
    steps: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    view = Live(render(directive, steps), console=console, refresh_per_second=8) if live else None
    with contextlib.ExitStack() as stack:
        if view is not None:
            stack.enter_context(view)
        while True:
            if interrupted is not None and interrupted.is_set():
                raise Interrupted(f"interrupted while the directive was {_phase(directive)}")
            if operator_task is not None and operator_task.done():
                exc = None if operator_task.cancelled() else operator_task.exception()
                raise DemoError(f"the operator stopped unexpectedly: {exc!r}" if exc else "the operator stopped")
            current = await asyncio.to_thread(client.directive, namespace, name)
            directive = current or directive
            steps = await asyncio.to_thread(client.steps, namespace, name)
            elapsed = loop.time() - started
            if view is not None:
                view.update(render(directive, steps))
            else:
                for line in _changes(seen, directive, steps, elapsed):
                    console.print(line, highlight=False)
            phase = (directive.get("status") or {}).get("phase")
            if phase in TERMINAL_PHASES:
                return directive, steps, False
            if elapsed > timeout:
                return directive, steps, True
            await asyncio.sleep(POLL_SECONDS)


# -- the ending -------------------------------------------------------------------------------


def print_pull_request(console: Console, directive: dict[str, Any], repo: Path | None) -> None:
    spec, status = directive["spec"], directive.get("status") or {}
    pr = status.get("pullRequest") or {}
    base = (spec.get("repository") or {}).get("baseBranch", "main")
    branch = pr.get("branch")
    console.rule("[bold green]pull request")
    record = pull_request_record(repo, branch) if repo is not None and branch else None
    if record is not None:
        number, meta = record
        console.print(f"[bold]#{number}[/] {meta.get('title', '')}  [dim]({meta.get('state', 'open')})[/]")
    console.print(f"  url     {pr.get('url') or '(none)'}", highlight=False)
    console.print(f"  branch  {branch} → {base}", highlight=False)
    if repo is None or not branch:
        return
    if record is not None:
        console.print(
            f"  record  git --git-dir={repo} cat-file blob refs/makima/pulls/{record[0]}/meta", highlight=False
        )
    console.print(f"\n[bold]commits[/] [dim](git log --oneline {base}..{branch})[/]")
    console.print(git("--git-dir", str(repo), "log", "--oneline", f"{base}..{branch}"), highlight=False)
    console.print(f"\n[bold]diffstat[/] [dim](git diff --stat {base}...{branch})[/]")
    console.print(git("--git-dir", str(repo), "diff", "--stat", f"{base}...{branch}"), highlight=False)


def kubectl_lines(kubeconfig: Path | None, namespace: str, name: str, tree_shown: bool = True) -> list[str]:
    ns = "" if namespace == "default" else f" -n {namespace}"
    lines = [f"export KUBECONFIG={kubeconfig}"] if kubeconfig is not None else []
    return [
        *lines,
        f"kubectl get directives{ns}",
        f"kubectl get dstep{ns} -l {LABEL_DIRECTIVE}={name}",
        f"kubectl describe directive{ns} {name}",
        f"makima get directive{ns} {name}    # the step tree" + (", as above" if tree_shown else ""),
    ]


def keep_lines(
    run: LocalRun, namespace: str, name: str, tree_shown: bool, second: Path | None = None, step: str | None = None
) -> list[str]:
    """What a person pastes into another shell while `--keep` runs: every line works as is."""
    ns = "" if namespace == "default" else f" -n {namespace}"
    lines = kubectl_lines(run.kubeconfig, namespace, name, tree_shown)
    lines.insert(1, f"export MAKIMA_API_URL={run.api_url}")
    if run.reader_token_file is not None:
        lines.insert(2, f"export MAKIMA_READER_TOKEN=$(cat {run.reader_token_file})")
    lines.append(f"makima logs{ns} {name}" + (f" --step {step}" if step else "") + "    # a task's events")
    lines.append(f"makima dashboard{ns}    # the DAG live in a browser, on http://127.0.0.1:8765")
    if second is not None:
        lines.append(f"kubectl apply -f {second}    # a second directive, on the same local repository")
    return lines


def write_second_example(body: dict[str, Any], state: Path) -> Path:
    """The applied example under another name, ready to apply (its URL is the local repository)."""
    second = copy.deepcopy(body)
    second["metadata"] = {"name": f"{body['metadata']['name']}-2"}
    path = state / SECOND_EXAMPLE_FILE
    path.write_text(
        "# Written by `makima demo --keep`: the example with the demo's repository URL filled in.\n"
        + yaml.safe_dump(second, sort_keys=False)
    )
    return path


def print_failure(console: Console, directive: dict[str, Any], steps: list[dict[str, Any]], reason: str) -> None:
    status = directive.get("status") or {}
    console.rule("[bold red]the directive did not complete")
    console.print(reason, highlight=False)
    console.print(f"phase: {status.get('phase', '(none)')}  progress: {status.get('progress', '-')}", highlight=False)
    if status.get("message"):
        console.print(f"message: {status['message']}", highlight=False)
    for cond in status.get("conditions") or []:
        console.print(
            f"  {cond.get('type')}={cond.get('status')} {cond.get('reason', '')}: {cond.get('message', '')}",
            highlight=False,
        )
    for s in steps:
        st = s.get("status") or {}
        line = f"  step {_step_name(s)}: {st.get('phase', 'Pending')} (attempts {st.get('attempts', 0)})"
        console.print(line + (f" — {st['message']}" if st.get("message") else ""), highlight=False)


# -- the whole run ----------------------------------------------------------------------------


def load_example(path: Path, repo_url: str) -> dict[str, Any]:
    if not path.is_file():
        raise DemoError(f"the example directive {path} is missing (run the demo from a clone: `make demo`)")
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    doc = copy.deepcopy(doc)
    doc["spec"]["repository"]["url"] = repo_url
    return doc


async def _keep_running(console: Console, lines: list[str], interrupted: asyncio.Event) -> None:
    console.rule("[bold]the sandbox and the operator keep running")
    console.print("In another shell:", highlight=False)
    for line in lines:
        console.print(f"  {line}", highlight=False)
    console.print("Press Ctrl-C to stop them.", highlight=False)
    await interrupted.wait()
    console.print("stopping…", highlight=False)


async def run_demo(opts: DemoOptions, console: Console | None = None) -> DemoResult:
    """The quickstart; returns the exit code with what was observed (tests look at it)."""
    console = console or Console()
    live = console.is_terminal if opts.live is None else opts.live
    log_path = opts.state_dir / "operator.log"
    started = time.monotonic()
    example = yaml.safe_load(opts.example.read_text()) if opts.example.is_file() else None
    name = example["metadata"]["name"] if example else "greeter"
    base = (example or {}).get("spec", {}).get("repository", {}).get("baseBranch", "main")
    console.rule("[bold]makima demo")
    try:
        if opts.cluster:
            if not opts.repo_url:
                raise DemoError(
                    "--cluster needs --repo-url: a git repository the cluster's Jobs can reach and push to "
                    "(the local bare repository of the sandbox demo is not visible from a cluster)"
                )
            body = load_example(opts.example, opts.repo_url)
            try:
                client = await asyncio.to_thread(ClusterClient, os.environ.get("KUBECONFIG"))
            except Exception as exc:
                raise DemoError(f"no usable kubeconfig (KUBECONFIG={os.environ.get('KUBECONFIG', '')}): {exc}") from exc
            try:
                console.print(f"cluster {client.host} (KUBECONFIG), namespace {opts.namespace}", highlight=False)
                try:
                    await asyncio.to_thread(client.check_crds)
                except DemoError:
                    raise
                except Exception as exc:
                    raise DemoError(f"cannot reach the cluster at {client.host}: {exc}") from exc
                with interrupts() as interrupted:
                    return await _apply_and_watch(
                        opts, console, client, body, live, local_path(opts.repo_url), None, None, interrupted, started
                    )
            finally:
                client.close()
        opts.state_dir.mkdir(parents=True, exist_ok=True)
        console.print(f"state dir {opts.state_dir}; operator log {log_path}", highlight=False)
        with logs_to_file(log_path):
            with Stages(console).stage(f"bare repository {opts.state_dir / 'origin.git'} (seeded from {opts.seed})"):
                repo = await asyncio.to_thread(create_origin, opts.state_dir / "origin.git", opts.seed, base)
            body = load_example(opts.example, f"file://{repo}")
            async with local_stack(opts, console) as run:
                with interrupts() as interrupted:
                    client = await asyncio.to_thread(ClusterClient, str(run.kubeconfig))
                    try:
                        result = await _apply_and_watch(
                            opts,
                            console,
                            client,
                            body,
                            live,
                            repo,
                            run.kubeconfig,
                            run.operator_task,
                            interrupted,
                            started,
                        )
                    finally:
                        client.close()
                    if result.exit_code != 0:
                        console.print(f"operator log: {log_path}", highlight=False)
                    elif opts.keep:
                        second = write_second_example(body, opts.state_dir)
                        steps = [_step_name(s) for s in result.steps]
                        step = "core" if "core" in steps else (steps[0] if steps else None)
                        lines = keep_lines(run, opts.namespace, name, live, second, step)
                        await _keep_running(console, lines, interrupted)
                    return result
    except Interrupted as exc:
        console.print(f"makima demo: {exc}; stopped what it started", highlight=False)
        return DemoResult(130)
    except DemoError as exc:
        console.print(f"[bold red]makima demo:[/] {exc}", highlight=False)
        if not opts.cluster:
            console.print(f"operator log: {log_path}", highlight=False)
        return DemoResult(2)


async def _apply_and_watch(
    opts: DemoOptions,
    console: Console,
    client: ClusterClient,
    body: dict[str, Any],
    live: bool,
    repo: Path | None,
    kubeconfig: Path | None,
    operator_task: asyncio.Task[None] | None,
    interrupted: asyncio.Event | None,
    started: float,
) -> DemoResult:
    name = body["metadata"]["name"]
    if await asyncio.to_thread(client.replace_directive, opts.namespace, body):
        console.print(f"deleted the earlier directive {opts.namespace}/{name} first", highlight=False)
    console.print(
        f"applied {opts.example.name}: {opts.namespace}/{name} on {body['spec']['repository']['url']}",
        highlight=False,
    )
    applied = time.monotonic()
    directive, steps, timed_out = await watch(
        client, opts.namespace, name, opts.timeout, console, live, operator_task=operator_task, interrupted=interrupted
    )
    elapsed = time.monotonic() - applied
    phase = (directive.get("status") or {}).get("phase")
    if timed_out or phase != "Completed":
        why = (
            f"no Completed phase within {opts.timeout:g} s (--timeout)" if timed_out else f"the directive ended {phase}"
        )
        print_failure(console, directive, steps, why)
        return DemoResult(1, directive, steps, repo, elapsed)
    print_pull_request(console, directive, repo)
    if not opts.keep:  # with --keep they come, ready to paste, under "keep running"
        console.rule("[bold]the same with kubectl")
        if kubeconfig is not None:
            console.print("[dim](the sandbox stops when the demo ends: run `makima demo --keep` to use these)[/]")
        for line in kubectl_lines(kubeconfig, opts.namespace, name, tree_shown=live):
            console.print(f"  {line}", highlight=False)
    total = time.monotonic() - started
    console.print(
        f"\n[bold green]done:[/] {name} Completed in {elapsed:.1f} s after apply, {total:.1f} s in all.",
        highlight=False,
    )
    return DemoResult(0, directive, steps, repo, elapsed)


def demo(
    state_dir: Path = typer.Option(
        DEFAULT_STATE_DIR, help="Where the demo keeps its PostgreSQL, repository, kubeconfig and operator log."
    ),
    timeout: float = typer.Option(120.0, help="Seconds the directive has to reach Completed after it is applied."),
    keep: bool = typer.Option(False, "--keep", help="Leave the sandbox and the operator running until Ctrl-C."),
    cluster: bool = typer.Option(
        False, "--cluster", help="Use the cluster KUBECONFIG points at (chart installed); start nothing locally."
    ),
    repo_url: str | None = typer.Option(
        None,
        help="With --cluster (required there): a git repository the cluster's Jobs can reach and push to "
        "(https/ssh; give spec.repository.credentialsSecret in the example for a private one).",
    ),
    database_url: str | None = typer.Option(
        None, help="Use this PostgreSQL DSN instead of the demo's embedded server (tests pass theirs)."
    ),
    namespace: str = typer.Option("default", "--namespace", "-n", help="Namespace of the directive."),
    example: Path = typer.Option(DEFAULT_EXAMPLE, help="The directive to apply."),
    seed: Path = typer.Option(DEFAULT_SEED, help="The project the local bare repository starts with."),
    live: bool | None = typer.Option(None, "--live/--no-live", help="Live step tree (default: on a terminal)."),
) -> None:
    """Run the example directive end to end on a local sandbox cluster (or --cluster)."""
    opts = DemoOptions(
        state_dir=state_dir,
        timeout=timeout,
        keep=keep,
        cluster=cluster,
        repo_url=repo_url,
        database_url=database_url,
        namespace=namespace,
        example=example,
        seed=seed,
        live=live,
    )
    console = Console()
    if not console.is_terminal:  # CI logs, pipes: no hard wrapping at 80 columns
        console = Console(soft_wrap=True, width=100)
    try:
        result = asyncio.run(run_demo(opts, console))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(result.exit_code)
