"""pip (pyproject.toml), conda (environment.yml) and CI (constraints.txt) install one set."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]

# pip requirement name (and extras) -> conda-forge package names.
PIP_TO_CONDA: dict[str, tuple[str, ...]] = {
    "dask[distributed]": ("dask", "distributed"),
    "torch": ("pytorch",),
    "matplotlib": ("matplotlib-base",),
}
CONDA_ONLY = {"python"}

_CONDA_SPEC = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*$")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pip_requirements() -> list[Requirement]:
    return [Requirement(r) for r in pyproject()["project"]["dependencies"]]


def all_pip_requirements() -> list[Requirement]:
    extras = pyproject()["project"].get("optional-dependencies", {})
    return pip_requirements() + [Requirement(r) for group in extras.values() for r in group]


def conda_specs() -> dict[str, SpecifierSet]:
    """environment.yml as {name: specifier}; conda's `=1.2` (prefix match) reads as pip `==1.2`."""
    specs: dict[str, SpecifierSet] = {}
    for entry in yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]:
        assert isinstance(entry, str), (
            f"environment.yml entry {entry!r}: nested pip sections are not expected"
        )
        match = _CONDA_SPEC.match(entry)
        assert match, f"environment.yml entry {entry!r} is not 'name[spec]'"
        name, spec = match.groups()
        clauses = [re.sub(r"^=(?=[^=])", "==", c.strip()) for c in spec.split(",") if c.strip()]
        specs[canonicalize_name(name)] = SpecifierSet(",".join(clauses))
    return specs


def conda_names_of(req: Requirement) -> tuple[str, ...]:
    key = f"{req.name}[{','.join(sorted(req.extras))}]" if req.extras else req.name
    return PIP_TO_CONDA.get(key, (req.name,))


def constraint_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt line {line!r} is not an exact 'name==version' pin"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_conda_environment_is_the_pip_dependency_set() -> None:
    conda = conda_specs()
    expected = {canonicalize_name(n) for r in pip_requirements() for n in conda_names_of(r)}
    assert set(conda) - CONDA_ONLY == expected
    assert set(conda) >= CONDA_ONLY


def test_version_pins_agree_where_both_give_one() -> None:
    conda = conda_specs()
    for req in pip_requirements():
        for name in conda_names_of(req):
            conda_spec = conda.get(canonicalize_name(name))  # absence: the set test reports it
            if req.specifier and conda_spec:
                assert conda_spec == req.specifier, f"{req} (pip) vs {name}{conda_spec} (conda)"


def test_torch_is_pinned_exactly() -> None:
    torch = next(r for r in pip_requirements() if r.name == "torch")
    assert torch.specifier == SpecifierSet("==2.13.0")
    assert conda_specs()["pytorch"] == SpecifierSet("==2.13.0")


def test_constraints_pin_every_dependency_within_its_range() -> None:
    pins = constraint_pins()
    for req in all_pip_requirements():
        names = [req.name] + (
            ["distributed"] if req.name == "dask" and "distributed" in req.extras else []
        )
        for name in names:
            pin = pins.get(canonicalize_name(name))
            assert pin is not None, f"constraints.txt has no pin for {name} (from pyproject {req})"
            if name == req.name:
                assert req.specifier.contains(pin, prereleases=True), (
                    f"constraints.txt pins {name}=={pin} outside {req}"
                )


@pytest.mark.parametrize("req", pip_requirements(), ids=str)
def test_installed_version_is_the_constrained_one(req: Requirement) -> None:
    """PEP 440 `==` ignores local labels, so a `+cpu` torch build matches its pin."""
    pinned = constraint_pins()[canonicalize_name(req.name)]
    installed = importlib.metadata.version(req.name)
    assert SpecifierSet(f"=={pinned}").contains(installed, prereleases=True), (
        f"installed {req.name} {installed} differs from constraints.txt {pinned}"
    )


def test_console_script_is_the_typer_app() -> None:
    assert pyproject()["project"]["scripts"] == {"terracube": "terracube.workflows.cli.app:app"}
    (entry_point,) = importlib.metadata.entry_points(group="console_scripts", name="terracube")
    assert entry_point.value == "terracube.workflows.cli.app:app"
    import typer

    assert isinstance(entry_point.load(), typer.Typer)
