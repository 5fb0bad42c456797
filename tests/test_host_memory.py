"""The `latte` command's host-memory policy: freed CPU tensors' memory is reused, not faulted in again."""
import subprocess
import sys

import pytest

from latte.host_memory import keep_freed_memory

SCRIPT = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from latte.host_memory import keep_freed_memory
    assert keep_freed_memory()
x = torch.randn(1024, 1024)
def step():  # large temporaries freed and made again, as every forward pass does
    a = torch.empty(16 * 2**20).fill_(1.0)
    return float((a * 2).sum() + (x @ x)[0, 0])
for _ in range(6):  # the heap grows over the first steps until the freed chunks fit the next step's
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str, env: dict | None = None) -> int:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True, env=env)
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt: Linux only")
def test_kept_heap_memory_cuts_page_faults_of_repeated_large_tensors():
    default, kept = page_faults("default"), page_faults("keep")
    assert default > 10 * 16384 // 2  # each 64 MB temporary faults in most of its 16384 pages again
    assert kept * 4 < default


def test_latte_system_malloc_keeps_the_default(monkeypatch):
    monkeypatch.setenv("LATTE_SYSTEM_MALLOC", "1")
    assert keep_freed_memory() is False
