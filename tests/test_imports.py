"""Every module imports on its own, the packages have no import circle, and the public surface is what the docs say."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import ches

PACKAGE = Path(ches.__file__).parent
MODULES = sorted(module.name for module in pkgutil.walk_packages(ches.__path__, "ches."))


def test_the_walk_reaches_inside_the_subpackages():
    """Not only the top level: a module list that stopped at ``ches/*.py`` would check a third of the code."""
    files = {".".join(("ches", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
             for path in PACKAGE.rglob("*.py")} - {"ches"}
    assert files == set(MODULES) and len(files) > 40
    assert {"ches.data.inputs", "ches.model.engine", "ches.run.runner", "ches.cli.commands"} <= files


def test_every_module_imports_on_its_own():
    """Each with no other ches module loaded first, so that one which only imports because another ran first fails."""
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    for loaded in [m for m in sys.modules if m == 'ches' or m.startswith('ches.')]:\n"
            "        del sys.modules[loaded]\n"
            "    importlib.import_module(name)\n")
    subprocess.run([sys.executable, "-c", code, *MODULES], check=True, capture_output=True)


def _imports(path: Path) -> set[str]:
    """The ches modules ``path`` imports, at any place in the file (TYPE_CHECKING blocks and functions included)."""
    module = ".".join(("ches", *path.relative_to(PACKAGE).with_suffix("").parts))
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target.startswith("ches"):
                continue
            for alias in node.names:  # `from . import x` names a module; `from .m import f` names m
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("ches.")}
    return {name for name in found if name in MODULES or name == "ches"} - {module}


def test_no_import_circle():
    """Between modules, counting the imports inside functions and under TYPE_CHECKING: a circle among them
    means two modules cannot be understood (or moved) one without the other."""
    graph = {".".join(("ches", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__"): _imports(p)
             for p in PACKAGE.rglob("*.py")}
    graph = {name: {t for t in targets if t in graph and not graph[t] is None} for name, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(name, trail):
        state[name] = 1
        for target in sorted(graph[name]):
            if target == "ches" or target.endswith("__init__"):
                continue
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(target):] + [target]))
            if target not in state:
                visit(target, trail + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_long_flat_module_list():
    assert len([path for path in PACKAGE.glob("*.py")]) <= 12


def test_public_surface():
    assert set(ches.__all__) == {
        "score", "score_run", "filter", "filter_run", "rank", "summary", "pairs", "pairs_run", "validate", "audit",
        "load_data", "load_embeddings", "extract_prompt", "with_reference", "reference_of",
        "ScoreOptions", "FilterOptions", "PairOptions", "ValidateOptions", "AuditOptions", "ReportOptions",
        "RunInfo", "PairsInfo", "FilterCut", "AuditResult", "ChesError", "__version__"}
    assert issubclass(ches.ChesError, ValueError)
    for name in ches.__all__:
        assert getattr(ches, name) is not None, name


def test_other_names_are_not_imported_behind_the_users_back():
    with pytest.raises(AttributeError, match="has no attribute 'runner'.*public names are .*score"):
        ches.runner  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'stats'"):
        ches.stats  # noqa: B018


def test_nothing_reads_or_writes_pickles():
    source = "\n".join(path.read_text() for path in PACKAGE.rglob("*.py"))
    assert "from .run.runner import" in source  # the walk reads the subpackages
    for forbidden in ("torch.load(", "import pickle", "pickle.load", "weights_only=False", "trust_remote_code=True"):
        assert forbidden not in source, forbidden


def test_the_command_line_starts_without_the_heavy_libraries():
    """`ches --help` / `--version` stay fast: building the parser imports no torch, transformers or datasets."""
    code = ("import sys, ches, ches.cli; ches.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_data_package_needs_no_torch():
    code = ("import sys, importlib, pkgutil, ches.data; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(ches.data.__path__, 'ches.data.')]; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_commands_do_not_import_each_other():
    """ches.cli registers ches pairs from its table without importing ches.cli.pairs, which needs only ches.cli.flags."""
    code = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
            "print('ches.cli.pairs' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, "ches.cli"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    assert _imports(PACKAGE / "cli" / "pairs.py") & {m for m in MODULES if m.startswith("ches.cli.")} == {
        "ches.cli.flags"}


def test_the_trainer_and_report_modules_are_reached_from_ches():
    """The docs write ``import ches`` then ``ches.trl.DPOTrainer(...)`` and ``ches.report.write_report(...)``."""
    code = "import ches; print(ches.trl.DPOTrainer.__module__, ches.report.write_report.__module__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "ches.trl ches.report"


def test_public_names_load_on_first_use():
    code = ("import sys, ches; before = 'ches.api' in sys.modules; ches.score; "
            "print(before, 'ches.api' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False True"
    assert callable(ches.summary) and callable(ches.validate) and ches.score.__module__ == "ches.api"
