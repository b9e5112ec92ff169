"""The README's two commands stay true: CI runs the README's test command verbatim, and the demo command
names a real `dojo` subcommand."""
import re
from pathlib import Path

from dojo.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    return [b.strip() for b in blocks[:2]]


def test_ci_runs_the_readme_test_command():
    _, test_cmd = readme_commands()
    assert "pytest" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_demo_command_is_a_real_subcommand_and_installs_cpu_torch():
    demo_cmd, test_cmd = readme_commands()
    for cmd in (demo_cmd, test_cmd):
        assert "pip install torch==2.13.0" in cmd   # the CPU wheel; unpinned torch pulls CUDA
    sub = demo_cmd.rsplit("dojo ", 1)[1].split()[0]
    assert build_parser().parse_args([sub]).command == sub
