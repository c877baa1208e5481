"""Every tool's command line: a bad one is one line on stderr naming the tool, exit code 2, no usage block; and the
front door, `normgpt`, lists its subcommands and runs each one."""

import importlib
import importlib.util

import pytest

from train.config import REPO_ROOT


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOLS = {
    "export": lambda: importlib.import_module("train.publish.command"),
    "push": lambda: importlib.import_module("train.publish.hub"),
    "report.py": lambda: importlib.import_module("train.sweep.report"),
    "ablate.py": lambda: importlib.import_module("train.sweep.ablate"),
    "evaluate": lambda: importlib.import_module("train.evaluate"),
    "compare_llama_cpp": lambda: script("compare_llama_cpp"),
}


@pytest.mark.parametrize("argv", [[], ["somewhere", "--no_such_flag"]], ids=["missing arguments", "unknown flag"])
@pytest.mark.parametrize("name", TOOLS)
def test_a_bad_command_line_is_one_line(name, argv, capsys):
    with pytest.raises(SystemExit) as stop:
        TOOLS[name]().main(argv)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == "" and len(lines) == 1, captured.err
    assert lines[0].startswith(f"{name}: error: ") and lines[0].endswith("(see --help)")
