"""The README is the install contract: its test command is the line .ci/run runs, and both of
its commands use the constraints file that pins the development torch."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_test_command_is_what_ci_runs():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    tests = [line for line in _bash_lines() if line.endswith("-m pytest")]
    assert len(tests) == 1, tests
    assert tests[0] in ci, (tests[0], ci)


def test_readme_install_commands_use_the_constraints_file():
    installs = [line for line in _bash_lines() if line.startswith("python3 -m venv .venv")]
    assert len(installs) == 2 and all("-c constraints-cpu.txt" in line for line in installs), installs
    pins = [
        line for line in (ROOT / "constraints-cpu.txt").read_text().splitlines() if not line.startswith("#")
    ]
    assert [p for p in pins if p.strip()] == ["torch==2.13.0"]
    assert any(line.endswith(".venv/bin/pyro-disco demo") for line in installs)
