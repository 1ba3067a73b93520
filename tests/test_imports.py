"""Every module imports on its own, and the public surface is what the docs say."""

import importlib
import pkgutil

import ches


def test_every_module_imports():
    for module in pkgutil.iter_modules(ches.__path__):
        importlib.import_module(f"ches.{module.name}")


def test_public_surface():
    assert set(ches.__all__) == {"score", "filter", "filter_run", "rank", "summary", "validate", "load_embeddings",
                                "extract_prompt", "pairs", "pairs_run", "audit", "ChesError", "__version__"}
    assert issubclass(ches.ChesError, ValueError)


def test_nothing_reads_or_writes_pickles():
    from pathlib import Path

    source = "\n".join(path.read_text() for path in Path(ches.__file__).parent.glob("*.py"))
    for forbidden in ("torch.load(", "import pickle", "pickle.load", "weights_only=False", "trust_remote_code=True"):
        assert forbidden not in source, forbidden


def test_the_command_line_starts_without_the_heavy_libraries():
    """`ches --help` / `--version` stay fast: building the parser imports no torch, transformers or datasets."""
    import subprocess
    import sys

    code = ("import sys, ches, ches.cli; ches.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_commands_do_not_import_each_other():
    """ches.cli registers ches pairs from its table without importing ches.pairs_cli, which needs only ches.flags."""
    import subprocess
    import sys

    code = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
            "print(sorted(m for m in ('ches.cli', 'ches.pairs_cli') if m in sys.modules))")
    for module, loaded in (("ches.cli", "['ches.cli']"), ("ches.pairs_cli", "['ches.pairs_cli']")):
        result = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, check=True)
        assert result.stdout.strip() == loaded


def test_public_names_load_on_first_use():
    assert callable(ches.summary) and callable(ches.validate) and ches.score.__module__ == "ches.api"
    assert ches.api.score_run and ches.stats.spearman  # submodules too
