"""The tree is the architecture: one import root, every package installed,
and no hand-written module grown past what one reader holds in their head."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE_LINES_MAX = 350
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_dirs() -> dict[str, Path]:
    """Every package under each mapped folder, by its dotted name."""
    found = {}
    for name, folder in _project()["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found[".".join([name, *rel.parts])] = init.parent
    return found


def _hand_written(*, tests: bool = False) -> list[Path]:
    found = {p for d in set(_package_dirs().values()) for p in d.glob("*.py")}
    if tests:
        found |= set((ROOT / "tests").rglob("*.py"))
    return sorted(p for p in found if not p.name.endswith(GENERATED_SUFFIXES))


def test_every_package_is_installed_under_the_one_import_root():
    listed = set(_project()["packages"])
    present = set(_package_dirs())
    assert present - listed == set(), "packages missing from pyproject's [tool.setuptools] packages"
    assert listed - present == set(), "pyproject lists packages that do not exist"
    assert all(name.startswith("idlegrid.") for name in listed)


def test_no_hand_written_module_exceeds_the_line_limit():
    long = {str(p.relative_to(ROOT)): n for p in _hand_written(tests=True)
            if (n := len(p.read_text().splitlines())) > MODULE_LINES_MAX}
    assert long == {}, f"modules over {MODULE_LINES_MAX} lines: split them by concern"


def test_nothing_imports_the_old_top_level_names():
    old = ("from services", "import services", "from ledger", "import ledger", "from gateway", "import gateway")
    offenders = [str(p.relative_to(ROOT)) for p in _hand_written(tests=True)
                 if any(line.lstrip().startswith(old) for line in p.read_text().splitlines())]
    assert offenders == []
