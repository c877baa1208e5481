"""Import a file of scripts/ (not a package) as a module, for the tests of the ablation scripts."""

import importlib.util
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # ablate.py imports report by name: load each once
    spec.loader.exec_module(module)
    return module
