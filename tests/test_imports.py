"""Every module imports on its own, and the public surface is what the docs say."""

import importlib
import pkgutil

import ches


def test_every_module_imports():
    for module in pkgutil.iter_modules(ches.__path__):
        importlib.import_module(f"ches.{module.name}")


def test_public_surface():
    assert set(ches.__all__) == {"score", "filter", "rank", "summary", "validate", "load_embeddings", "extract_prompt", "ChesError",
                                "__version__"}
    assert issubclass(ches.ChesError, ValueError)


def test_nothing_reads_or_writes_pickles():
    from pathlib import Path

    source = "\n".join(path.read_text() for path in Path(ches.__file__).parent.glob("*.py"))
    for forbidden in ("torch.load(", "import pickle", "pickle.load", "weights_only=False", "trust_remote_code=True"):
        assert forbidden not in source, forbidden
