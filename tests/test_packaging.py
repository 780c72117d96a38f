"""pyproject.toml and environment.yml list the same dependencies; README and CI agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    dev = []
    for r in extras["dev"]:  # tbrm[a,b]: the dev extra pulls in the project's other extras
        dev += [x for e in r[5:-1].split(",") for x in extras[e]] if r.startswith("tbrm[") else [r]
    wanted = {name(r): r.replace(" ", "") for r in project["dependencies"] + dev}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {name(r): r.replace(" ", "") for r in pip if not r.startswith("-e")}
    assert set(listed) == set(wanted)
    for dep, spec in listed.items():  # same version bounds, torch pinned to the CPU wheel in the env
        assert spec == wanted[dep] or (dep == "torch" and spec == "torch==2.13.0"), (dep, spec, wanted[dep])
    assert any(d == "python=3.11" for d in env["dependencies"] if isinstance(d, str))
    assert "-e .[dev]" in pip


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    command = "python -m pytest -q"
    assert command in readme and command in ci
    assert ci.index("torch==2.13.0") < ci.index('-e ".[dev]"')
