"""`python -m tests.realcluster build|up|down|status`: the local control plane by hand.

`up` starts etcd, kube-apiserver, kube-controller-manager and the node agent in the
background under ~/.local/state/makima/realcluster and prints the `export KUBECONFIG=` line;
`down` stops them. `build` only builds (or finds) the binaries.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path

from .launcher import BINARIES, ControlPlane, Unavailable, build, built, release

STATE = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "makima" / "realcluster"
PROCS = ("node-agent", "kube-controller-manager", "kube-apiserver", "etcd")


def _down() -> None:
    for name in PROCS:
        pidfile = STATE / f"{name}.pid"
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.killpg(int(pidfile.read_text()), signal.SIGTERM)
            pidfile.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.realcluster", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build", "up", "down", "status"])
    parser.add_argument(
        "--if-possible", action="store_true", help="build: where Go is missing, say so and exit 0 (tests then skip)"
    )
    args = parser.parse_args()
    try:
        if args.command == "build":
            if args.if_possible and shutil.which("go") is None:
                print("no Go toolchain: the real-control-plane tests will be skipped")
                return 0
            bins = build(log=print)
            print(f"{release()}: {', '.join(BINARIES)} in {bins}")
        elif args.command == "status":
            found = built()
            print(
                f"{release()}: {'built in ' + str(found) if found else 'not built (python -m tests.realcluster build)'}"
            )
        elif args.command == "down":
            _down()
            print("stopped")
        else:
            _down()
            shutil.rmtree(STATE, ignore_errors=True)
            plane = ControlPlane(STATE, build(log=print), tied=False)
            plane.start()
            plane.procs.clear()  # leave them running: `down` stops them by their pid files
            print(f"control plane {release()} at {plane.url}; logs in {STATE}")
            print(f"export KUBECONFIG={plane.kubeconfig}")
    except Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
