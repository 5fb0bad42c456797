"""How the benchmarks report a row that fails: one line in its table, the full traceback (or the failed
command's stderr) on stderr, and the rows after it still run, so that a one-shot GPU run does not
lose every figure to one broken row (a missing C compiler for the compiled rows, say)."""
from __future__ import annotations

import re
import sys
import traceback

# torch's hint lines that end a compile error's message but say nothing about its cause
_HINTS = re.compile(r"^(Set TORCHDYNAMO_VERBOSE|You can suppress this exception|For even more developer context)")


def _lines(text: str) -> list[str]:
    """The non-empty lines of `text`, stripped, without torch's hint lines."""
    return [line.strip() for line in text.splitlines() if line.strip() and not _HINTS.match(line.strip())]


def one_line(error: BaseException, limit: int = 300) -> str:
    """`Type: message` of what went wrong, on one line: a compiler's wrapper (torch._dynamo's
    BackendCompilerFailed, whose own first line is only "backend='inductor' raised:") is unwrapped."""
    inner = getattr(error, "inner_exception", None) or error
    text = " ".join(" ".join(_lines(str(inner))).split())
    return f"{type(inner).__name__}: {text[:limit]}" if text else type(inner).__name__


def show_traceback(label: str, error: BaseException) -> None:
    """The whole traceback on stderr, under the row's label."""
    print(f"--- {label} failed:", file=sys.stderr)
    traceback.print_exception(error, file=sys.stderr)


def stderr_cause(stderr: str) -> str:
    """The line of a failed command's stderr that names the error: the last one that says Error,
    Exception or error:, past torch's hint lines; else its last line."""
    lines = _lines(stderr)
    named = [line for line in lines if re.search(r"Error|Exception|error:", line)]
    return (named or lines or [""])[-1]
