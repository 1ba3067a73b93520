"""The ``ches`` command: a thin layer over the Python API (:mod:`ches.cli.commands`), its flags made from the
options (:mod:`ches.cli.flags`), and ``ches pairs`` in a module of its own (:mod:`ches.cli.pairs`)."""

from .commands import build_parser, main, main_exit

__all__ = ["main", "main_exit", "build_parser"]
