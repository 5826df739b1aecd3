"""The layout the design fixes: three import packages listed in pyproject, imports that
flow one way (``engines`` imports neither ``stream`` nor ``calibrate``), and ``launch/``
kept a folder of launch files, never a Python package (ROS 2 owns ``import launch``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (JetPack 6 has 3.10)

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("stream", "engines", "calibrate")


def _imported_top_levels(path: Path) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            tops.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return tops


def test_pyproject_lists_every_package_explicitly() -> None:
    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]
    found = sorted(".".join(p.parent.relative_to(REPO).parts)
                   for top in PACKAGES for p in (REPO / top).rglob("__init__.py"))
    assert sorted(listed) == found


@pytest.mark.parametrize(("package", "forbidden"), [("engines", {"stream", "calibrate"}),
                                                    ("calibrate", {"stream"})])
def test_imports_flow_one_way(package: str, forbidden: set[str]) -> None:
    bad = {str(p.relative_to(REPO)): sorted(_imported_top_levels(p) & forbidden)
           for p in (REPO / package).rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def test_launch_is_not_a_python_package() -> None:
    assert not list((REPO / "launch").rglob("*.py"))
