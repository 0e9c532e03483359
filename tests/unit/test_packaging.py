"""The package as distributed: what the wheel carries, what it is called, which Pythons it accepts.

deploy/check-wheel.sh builds and installs the real wheel; these checks catch the usual mistakes
(a new data file or sub-folder the wheel would leave out, a dependency missing from the locks)
in the unit suite, before a build.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

import exchange
from exchange.envelope import schema

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "exchange"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: Files that are not package data and need no declaration.
NOT_DATA = ("*.py", "*.pyc")


def package_files() -> list[Path]:
    return [p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def test_every_data_file_in_the_package_is_declared_package_data() -> None:
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["exchange"]
    data = [
        p.relative_to(PACKAGE).as_posix()
        for p in package_files()
        if not any(fnmatch.fnmatch(p.name, n) for n in NOT_DATA)
    ]
    assert data, "the walk found no data files at all (the XSD and openapi.yaml are some)"
    undeclared = [f for f in data if not any(fnmatch.fnmatch(f, pattern) for pattern in patterns)]
    assert not undeclared, f"not in [tool.setuptools.package-data] exchange, so not in the wheel: {undeclared}"


def test_every_folder_with_python_code_is_a_package() -> None:
    # setuptools' find (not find_namespace) skips a folder without __init__.py: its modules would be
    # missing from the wheel while working fine in an editable checkout.
    folders = {p.parent for p in package_files() if p.suffix == ".py"}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists())
    assert not missing, f"add an __init__.py (or the code is left out of the wheel): {missing}"


def test_the_envelope_schema_is_read_from_inside_the_package() -> None:
    assert schema.ENVELOPE_XSD.is_file()
    assert schema.ENVELOPE_XSD.resolve().is_relative_to(Path(exchange.__file__).resolve().parent)
    assert exchange.SCHEMAS_DIR.resolve() == schema.ENVELOPE_XSD.resolve().parent


def test_the_distribution_is_not_the_unrelated_exchange_on_pypi() -> None:
    project = PYPROJECT["project"]
    assert canonicalize_name(project["name"]) == "exchange-bus"
    assert project["scripts"]["exchange"] == "exchange.cli.main:main"


@pytest.mark.parametrize("version", ["3.11.0", "3.12.0", "3.13.0"])
def test_requires_python_accepts_every_supported_version(version: str) -> None:
    assert version in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_the_example_adapter_depends_on_the_bus_distribution() -> None:
    example = tomllib.loads((ROOT / "examples/exchange-adapter-mailbox/pyproject.toml").read_text(encoding="utf-8"))
    names = {canonicalize_name(Requirement(r).name) for r in example["project"]["dependencies"]}
    assert "exchange-bus" in names and "exchange" not in names


def pinned(lock: Path) -> dict[str, str]:
    """name -> version of every ``name==version`` line of a lock file."""
    pins = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


@pytest.mark.parametrize(("lock", "extras"), [("requirements.lock", ()), ("requirements-dev.lock", ("dev",))])
def test_the_lock_pins_every_declared_dependency_within_its_range(lock: str, extras: tuple[str, ...]) -> None:
    # A dependency added to pyproject.toml without `deploy/lock.sh` would be missing on a fresh machine.
    project = PYPROJECT["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        declared += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins = pinned(ROOT / lock)
    stale = [
        f"{r} (locked: {pins.get(canonicalize_name(r.name), 'missing')})"
        for r in declared
        if canonicalize_name(r.name) not in pins
        or not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)
    ]
    assert not stale, f"{lock} does not satisfy pyproject.toml; run deploy/lock.sh: {stale}"


def test_the_runtime_lock_agrees_with_the_dev_lock() -> None:
    runtime, dev = pinned(ROOT / "requirements.lock"), pinned(ROOT / "requirements-dev.lock")
    differ = {name: (version, dev.get(name)) for name, version in runtime.items() if dev.get(name) != version}
    assert not differ, f"run deploy/lock.sh: the two locks pin different versions: {differ}"
