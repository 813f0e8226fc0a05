"""The installed package's layers import only downward, no two modules import each other (directly or round a
cycle), and a wheel built from the checkout holds one top-level package, ``hmnas_nni``."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import hmnas_nni

ROOT = Path(__file__).resolve().parents[1]
#: Layer of every subpackage: a module may import its own layer and the ones below, never above.
LAYERS = {"hmnas_nni.format": 0, "hmnas_nni.spaces": 1, "hmnas_nni.common": 2, "hmnas_nni.nas": 2,
          "hmnas_nni.strategy": 3, "hmnas_nni.search": 3,
          "hmnas_nni.export": 4, "hmnas_nni.experiments": 4, "hmnas_nni.cli": 5}
#: Where each subpackage lives in the checkout (pyproject's package-dir).
FOLDERS = {"hmnas_nni.format": ROOT / "hmnas_nni" / "format", "hmnas_nni.spaces": ROOT / "search_spaces",
           "hmnas_nni.common": ROOT / "hmnas_nni" / "common", "hmnas_nni.nas": ROOT / "hmnas_nni" / "nas",
           "hmnas_nni.strategy": ROOT / "hmnas_nni" / "strategy", "hmnas_nni.search": ROOT / "hmnas_nni" / "search",
           "hmnas_nni.export": ROOT / "export", "hmnas_nni.experiments": ROOT / "experiments",
           "hmnas_nni.cli": ROOT / "hmnas_nni" / "cli"}


def modules() -> dict[str, Path]:
    """Every module of the package (``hmnas_nni/__init__.py`` is exempt) -> its file."""
    found = {}
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def layer(module: str) -> int | None:
    """The layer of a ``hmnas_nni`` module (None outside the package or for ``hmnas_nni`` itself)."""
    for package, n in LAYERS.items():
        if module == package or module.startswith(package + "."):
            return n
    return None


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports anywhere (top level, functions, type-checking blocks)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t.startswith("hmnas_nni.") and t != name}
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    found = modules()
    known = set(found)
    return {name: imports(name, path, known) for name, path in found.items()}


def test_every_subpackage_folder_is_found() -> None:
    found = modules()
    assert {"hmnas_nni.search.run", "hmnas_nni.cli.main", "hmnas_nni.export.bench", "hmnas_nni.spaces.base",
            "hmnas_nni.experiments.compare", "hmnas_nni.format.files", "hmnas_nni.nas.strategy"} <= set(found)
    assert Path(hmnas_nni.__file__).resolve() == ROOT / "hmnas_nni" / "__init__.py"  # the checkout is installed


def test_imports_go_only_downward() -> None:
    upward = [f"{src} (layer {layer(src)}) imports {dst} (layer {layer(dst)})"
              for src, targets in graph().items() for dst in sorted(targets)
              if layer(dst) is not None and layer(dst) > layer(src)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node] & set(edges)):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    # built from a copy, so setuptools' build/ folder never lands in (or is read back from) the checkout
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "runs", "*.egg-info",
                                                                "__pycache__", ".pytest_cache", ".ruff_cache"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("hmnas_nni-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"hmnas_nni"}, sorted(top)
    assert "hmnas_nni/spaces/nasbench201.py" in names and "hmnas_nni/export/archs/nb201_fmnist.json" in names
    assert "hmnas_nni/cli/main.py" in names and "hmnas_nni/experiments/smoke.yml" in names


def test_every_module_imports() -> None:
    import importlib

    failed = []
    for name in modules():
        if name.endswith("__main__"):
            continue  # runs the command line
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - collect them all
            failed.append(f"{name}: {type(e).__name__}: {e}")
    assert not failed, "\n".join(failed)
