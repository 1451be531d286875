"""The import contracts in pyproject.toml, which `make lint` checks, break on the imports they forbid."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from importlinter.api import read_configuration

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ssmttm"
FAKE = "fakettm"  # a copy of the package's module tree, empty files only, under another name

# One import per contract that it forbids; some break more than one.
VIOLATIONS = {
    "ops/ssd.py": "config",
    "backbones/mamba.py": "generation.sampling",
    "codecs/base.py": "data.shards",
    "lm.py": "cli",
    "__init__.py": "cli",
    "generation/pipeline.py": "training.command",
    "data/prepare.py": "data.synth.command",
    "audio.py": "codecs.base",
    "eval/evaluate.py": "generation.pipeline",
    "provenance.py": "eval.models",
}


# Imports that they allow: the CLI dispatches to the commands, a command may use another, and each
# layer imports the ones below it.
ALLOWED = {
    "cli.py": "data.synth.command",
    "generation/command.py": "codecs.command",
    "training/trainer.py": "lm",
    "lm.py": "backbones.mamba",
    "backbones/mamba.py": "ops.ssd",
    "audio.py": "files",
    "eval/adherence.py": "codecs.spectral",
}


def _renamed(value):
    if isinstance(value, list):
        return [_renamed(v) for v in value]
    return re.sub(r"\bssmttm\b", FAKE, value) if isinstance(value, str) else value


def _module(path: str) -> str:
    """The module name of a file of FAKE: "codecs/base.py" -> "fakettm.codecs.base"."""
    parts = [FAKE, *path.removesuffix(".py").split("/")]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _tree(imports: dict[str, str]) -> set[str]:
    """The package's files, and those that `imports` names, with an __init__.py in every folder: the
    test keeps working while modules move."""
    names = {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")} | set(imports)
    for module in imports.values():
        path = module.replace(".", "/")
        if f"{path}/__init__.py" not in names:
            names.add(f"{path}.py")
    folders = {parent.as_posix() for name in names for parent in Path(name).parents}
    return names | {"__init__.py" if folder == "." else f"{folder}/__init__.py" for folder in folders}


def _contracts() -> list[dict]:
    return read_configuration(str(ROOT / "pyproject.toml"))["contracts_options"]


def _lint(tmp_path: Path, imports: dict[str, str]) -> subprocess.CompletedProcess:
    """lint-imports with our contracts, renamed to FAKE, over a tree of FAKE with `imports` in it."""
    for name in _tree(imports):
        module = tmp_path / FAKE / name
        module.parent.mkdir(parents=True, exist_ok=True)
        module.write_text(f"import {FAKE}.{imports[name]}\n" if name in imports else "")
    lines = ["[tool.importlinter]", f'root_package = "{FAKE}"']
    for contract in _contracts():
        lines.append("[[tool.importlinter.contracts]]")
        lines += [f"{key} = {json.dumps(_renamed(value))}" for key, value in contract.items()]
    config = tmp_path / "contracts.toml"
    config.write_text("\n".join(lines) + "\n")
    lint_imports = str(Path(sys.executable).parent / "lint-imports")
    command = [lint_imports, "--no-cache", "--no-logo", "--config", str(config)]  # 2.14 takes no positional file
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})


def test_the_contracts_hold_on_the_imports_they_allow(tmp_path):
    result = _lint(tmp_path, ALLOWED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in result.stdout


def test_every_contract_breaks_on_an_import_it_forbids(tmp_path):
    result = _lint(tmp_path, VIOLATIONS)
    assert result.returncode == 1, result.stdout + result.stderr
    for contract in _contracts():
        assert f"{contract['name']} BROKEN" in result.stdout, result.stdout
    for importer, imported in VIOLATIONS.items():
        assert f"{_module(importer)} -> {FAKE}.{imported}" in result.stdout, (importer, result.stdout)


@pytest.mark.parametrize("command", ["codecs.command", "data.synth.command"])
def test_a_command_module_at_any_depth_is_protected(tmp_path, command):
    result = _lint(tmp_path, {"text/base.py": command})
    assert result.returncode == 1 and f"{FAKE}.text.base -> {FAKE}.{command}" in result.stdout, result.stdout
