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


# ---------------------------------------------------------------------------------------------------------------------
# The front door


def test_normgpt_lists_every_subcommand_on_one_line(capsys):
    from train.commands import COMMANDS, main

    assert set(COMMANDS) == {"train", "prepare", "sweep", "report", "export", "evaluate", "push"}
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out.split("commands:\n")[1].split("\n\n")[0].splitlines()
    assert [line.split()[0] for line in listing] == list(COMMANDS)
    assert all(len(line.split()) > 3 for line in listing)  # a name and a sentence, one line each


@pytest.mark.parametrize("command", ["train", "prepare", "sweep", "report", "export", "evaluate", "push"])
def test_each_subcommand_runs_its_tool(command, capsys):
    from train.commands import main

    assert main([command, "--help"]) == 0
    assert "usage:" in capsys.readouterr().out


def test_a_bad_subcommand_is_one_line_and_exit_2(capsys):
    from train.commands import main

    assert main(["fly"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("normgpt: error: argument COMMAND: invalid choice: 'fly'")


def test_the_installed_command_and_the_scripts_reach_the_same_tools(tmp_path):
    """`normgpt` is the console script of the installed package, `python -m train` the same command, and the
    scripts/ entry points thin wrappers around it that need no sys.path edit: all of them run outside the clone."""
    import subprocess
    import sys
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="normgpt")
    assert script.value == "train.commands:main"
    missing = str(tmp_path / "missing")
    for argv in (["-m", "train", "report", missing], [str(REPO_ROOT / "scripts" / "report.py"), missing]):
        proc = subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr == f"report.py: error: '{missing}' is not a directory\n", argv


def test_the_report_starts_without_torch():
    """`normgpt report` (and every module it imports: the run directory's format, the fields' roles) is light."""
    import subprocess
    import sys

    check = "import sys; from train.commands import main; main(['report', '--help']); print(sorted(sys.modules))"
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    loaded = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0 and "'train.sweep.report'" in loaded
    assert "'torch'" not in loaded and "'transformers'" not in loaded
