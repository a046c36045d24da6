"""Every fenced bash and python block of the READMEs runs, and shows what it prints.

The rules, for whoever writes the READMEs:

- A ```bash or ```python block runs; ```text and unlabelled blocks are
  transcripts and do not. A block right after a line `<!-- not run: REASON -->`
  is skipped (a server that runs until stopped, docker, kubectl).
- `pip install` and `python -m pytest` commands are not run here: CI has just
  installed the package and is running the tests.
- In a bash block, lines `# -> TEXT` right after a command are the lines that
  command prints on stdout, all of them, in order. In a python block, a line
  `print(...)  # -> TEXT` says what that print writes; a block with any such
  line must print exactly those lines.
- Blocks of one README run in order in one empty folder (the export block
  writes the file the predict block reads), with this checkout first on the
  Python path. A README whose blocks train a model needs the real data
  (`KERAS_ATTN_DATA`) and is skipped without it.

Figures measured on a machine (speeds) are never shown in `# ->` lines.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
READMES = [REPO / "README.md", REPO / "benchmarks" / "README.md"]

_FENCE = re.compile(r"^```(\w*)\s*$")
_SKIP = re.compile(r"^<!--\s*not run:\s*(.+?)\s*-->\s*$")
_EXPECTED = re.compile(r"#\s->\s?(.*)$")
_NOT_RUN = re.compile(r"^\s*(pip install\b|python -m pytest\b)")
_TRAINS = re.compile(r"\bkeras_attn\.train\b(?!.*--help)|\bbenchmarks\.quality\b")
_TIMEOUT_S = 900


@dataclass
class Step:
    """One command of a bash block (or a whole python block) and the stdout lines it must print."""

    code: str
    line: int
    expected: list[str] = field(default_factory=list)


@dataclass
class Block:
    language: str
    line: int
    steps: list[Step]
    skip: str | None = None


def blocks(path: Path) -> list[Block]:
    """The bash and python blocks of the markdown file at ``path``, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i, skip = [], 0, None
    while i < len(lines):
        marker = _SKIP.match(lines[i])
        fence = _FENCE.match(lines[i])
        if marker:
            skip = marker.group(1)
        elif fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            body = lines[i + 1:end]
            language = fence.group(1)
            if language in ("bash", "python"):
                parse = _bash_steps if language == "bash" else _python_steps
                found.append(Block(language, i + 1, parse(body, i + 2), skip))
            skip, i = None, end
        elif lines[i].strip():
            skip = None
        i += 1
    return found


def _bash_steps(body: list[str], first: int) -> list[Step]:
    steps: list[Step] = []
    pending = ""
    for number, text in enumerate(body, first):
        stripped = text.strip()
        if stripped.startswith("#"):
            expected = _EXPECTED.match(stripped)
            if expected and steps and not pending:
                steps[-1].expected.append(expected.group(1))
            continue
        if not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        commands = [c.strip() for c in (pending + stripped).split("&&") if not _NOT_RUN.match(c)]
        if commands:
            steps.append(Step(" && ".join(commands), number))
        pending = ""
    return steps


def _python_steps(body: list[str], first: int) -> list[Step]:
    expected = [m.group(1) for line in body if (m := _EXPECTED.search(line))]
    return [Step("\n".join(body) + "\n", first, expected)]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONHASHSEED"] = "0"
    return env


def _run(block: Block, step: Step, folder: Path, readme: Path) -> None:
    command = ["bash", "-eo", "pipefail", "-c", step.code] if block.language == "bash" \
        else [sys.executable, "-c", step.code]
    done = subprocess.run(command, cwd=folder, env=_environment(), capture_output=True,
                          text=True, timeout=_TIMEOUT_S, stdin=subprocess.DEVNULL)
    where = f"{readme.relative_to(REPO)}:{step.line}"
    assert done.returncode == 0, f"{where} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    if step.expected:
        printed = [line.rstrip() for line in done.stdout.rstrip("\n").split("\n")]
        assert printed == [line.rstrip() for line in step.expected], f"{where} printed:\n{done.stdout}"


@pytest.mark.slow
@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(REPO)))
def test_readme_blocks_run_and_print_what_they_show(readme, tmp_path):
    runnable = [b for b in blocks(readme) if b.skip is None]
    assert runnable, f"{readme} has no runnable block"
    trains = any(_TRAINS.search(step.code) for b in runnable for step in b.steps)
    if trains and not os.environ.get("KERAS_ATTN_DATA"):
        pytest.skip("its blocks train on the real data: set KERAS_ATTN_DATA")
    for block in runnable:
        for step in block.steps:
            _run(block, step, tmp_path, readme)


def test_the_rules_parse_commands_outputs_and_markers(tmp_path):
    sample = tmp_path / "README.md"
    sample.write_text(
        "```bash\n"
        'pip install ".[train]" && python -m export.to_onnx   # the bundled model\n'
        "python -m export.predict m.onnx \\\n"
        '    "great"\n'
        "# -> positive 0.9\n"
        "python -m pytest -q\n"
        "```\n"
        "<!-- not run: a server -->\n"
        "```bash\n"
        "python -m export.serve m.onnx\n"
        "```\n"
        "```python\n"
        "print(1 + 1)  # -> 2\n"
        "```\n"
        "```text\n"
        "$ anything\n"
        "```\n",
        encoding="utf-8",
    )
    found = blocks(sample)
    assert [(b.language, b.skip) for b in found] == [("bash", None), ("bash", "a server"), ("python", None)]
    first = found[0].steps
    assert [s.code for s in first] == [
        "python -m export.to_onnx   # the bundled model",
        'python -m export.predict m.onnx "great"',
    ]
    assert first[1].expected == ["positive 0.9"] and not first[0].expected
    assert found[2].steps[0].expected == ["2"]
