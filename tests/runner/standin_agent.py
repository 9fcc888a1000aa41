"""A STAND-IN for the coding-agent CLIs (claude, codex, gemini, opencode, aider): not the real
programs. Installed under each CLI's name in a temp directory on PATH, it

- refuses arguments that are not exactly its profile's (so a profile that drifts is noticed),
- reads the prompt the way the profile passes it (stdin, or aider's --message-file),
- writes `<cli>.txt` holding the prompt (the step's change),
- prints the structured output the real CLI documents for a finished run, with the numbers
  taken from STANDIN_INPUT_TOKENS / STANDIN_OUTPUT_TOKENS / STANDIN_COST_USD / STANDIN_TURNS /
  STANDIN_MODEL, so the tests compare what they gave with what the runner parsed.

Run as `standin_agent.py <profile> <args...>`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from makima.core.agents import PROMPT_FILE, get_profile


def _aider_tokens(n: int) -> str:  # how aider prints counts: 950, 2.1k, 12k
    if n < 1000:
        return str(n)
    if n < 10_000:
        return f"{n / 1000:.1f}k"
    return f"{round(n / 1000)}k"


def main() -> int:
    name, args = sys.argv[1], sys.argv[2:]
    profile = get_profile(name)
    expected = list(profile.command[1:])
    if len(args) != len(expected) or any(e != a for e, a in zip(expected, args, strict=False) if e != PROMPT_FILE):
        print(f"stand-in {profile.binary}: unexpected arguments {args}, profile says {expected}", file=sys.stderr)
        return 2
    print(f"[stand-in for {profile.binary}, not the real CLI]", file=sys.stderr)
    on_stdin = PROMPT_FILE not in expected
    prompt = sys.stdin.read() if on_stdin else Path(args[expected.index(PROMPT_FILE)]).read_text()
    Path(f"{profile.binary}.txt").write_text(prompt)
    i, o = int(os.environ["STANDIN_INPUT_TOKENS"]), int(os.environ["STANDIN_OUTPUT_TOKENS"])
    cost, turns, model = (
        float(os.environ["STANDIN_COST_USD"]),
        int(os.environ["STANDIN_TURNS"]),
        os.environ["STANDIN_MODEL"],
    )

    def out(obj: object) -> None:
        print(json.dumps(obj), flush=True)

    if name == "claude-code":
        out({"type": "system", "subtype": "init", "cwd": os.getcwd(), "session_id": "s1", "model": model})
        out({"type": "assistant", "message": {"role": "assistant", "content": [{"type": "text", "text": "done"}]}})
        # input split over fresh and cache tokens, as Claude reports them
        usage = {
            "input_tokens": i // 2,
            "cache_creation_input_tokens": i // 4,
            "cache_read_input_tokens": i - i // 2 - i // 4,
            "output_tokens": o,
        }
        out(
            {
                "type": "result",
                "subtype": "success",
                "is_error": False,
                "num_turns": turns,
                "result": "done " + "x" * 20_000,  # a long final message: the line is still read whole
                "session_id": "s1",
                "total_cost_usd": cost,
                "usage": usage,
                "modelUsage": {model: {"inputTokens": i, "outputTokens": o, "costUSD": cost}},
            }
        )
    elif name == "codex":
        out({"type": "thread.started", "thread_id": "t1"})
        for turn in range(turns):  # the usage of each turn; the runner sums them
            ti = i // turns + (i % turns if turn == 0 else 0)
            to = o // turns + (o % turns if turn == 0 else 0)
            out({"type": "turn.started"})
            out({"type": "item.completed", "item": {"id": f"item_{turn}", "type": "agent_message", "text": "done"}})
            out(
                {"type": "turn.completed", "usage": {"input_tokens": ti, "cached_input_tokens": 0, "output_tokens": to}}
            )
    elif name == "gemini":
        out({"type": "init", "timestamp": "2026-01-01T00:00:00Z", "session_id": "s1", "model": model})
        out({"type": "message", "role": "assistant", "content": "done", "delta": True})
        stats = {
            "total_tokens": i + o,
            "input_tokens": i,
            "output_tokens": o,
            "duration_ms": 5,
            "tool_calls": turns - 1,
        }
        out({"type": "result", "status": "success", "stats": stats})
    elif name == "opencode":
        out({"type": "step_start", "sessionID": "s1", "part": {"type": "step-start"}})
        out({"type": "text", "sessionID": "s1", "part": {"type": "text", "text": "done"}})
        for turn in range(turns):
            ti = i // turns + (i % turns if turn == 0 else 0)
            to = o // turns + (o % turns if turn == 0 else 0)
            tokens = {"input": ti, "output": to, "reasoning": 0, "cache": {"read": 0, "write": 0}}
            c = cost / turns
            out(
                {"type": "step_finish", "sessionID": "s1", "part": {"type": "step-finish", "tokens": tokens, "cost": c}}
            )
    elif name == "aider":
        print("Aider v0.86.2")
        print(f"Model: {model} with diff edit format")
        spent = 0.0
        for turn in range(turns):
            ti = i // turns + (i % turns if turn == 0 else 0)
            to = o // turns + (o % turns if turn == 0 else 0)
            step_cost = cost / turns
            spent += step_cost
            print(
                f"Tokens: {_aider_tokens(ti)} sent, {_aider_tokens(to)} received. "
                f"Cost: ${step_cost:.4f} message, ${spent:.4f} session."
            )
    else:
        print(f"stand-in: no output for profile {name}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
