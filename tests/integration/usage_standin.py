"""A STAND-IN for the Codex CLI, not the real one: it does the scripted agent's work (plan,
files) with the prompt it got on stdin, then prints the per-turn usage lines that
`codex exec --json` documents ({"type":"turn.completed","usage":{...}}), with the counts
taken from STANDIN_INPUT_TOKENS / STANDIN_OUTPUT_TOKENS."""

from __future__ import annotations

import json
import os
import subprocess
import sys

prompt = sys.stdin.read()
done = subprocess.run([sys.executable, "-m", "makima_testing.scripted"], input=prompt, text=True, check=False)
print(json.dumps({"type": "thread.started", "thread_id": "stand-in"}), flush=True)
usage = {
    "input_tokens": int(os.environ["STANDIN_INPUT_TOKENS"]),
    "cached_input_tokens": 0,
    "output_tokens": int(os.environ["STANDIN_OUTPUT_TOKENS"]),
}
print(json.dumps({"type": "turn.completed", "usage": usage}), flush=True)
sys.exit(done.returncode)
