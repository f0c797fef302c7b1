"""Copies the C ABI library (libKVCrushC.so, from `swift build -c release --product KVCrushC`) into
the package when it is built; KVCRUSH_LIBRARY names another file. Everything else is in pyproject.toml."""
import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithLibrary(build_py):
    def run(self):
        source = Path(os.environ.get("KVCRUSH_LIBRARY", HERE.parent / ".build" / "release" / "libKVCrushC.so"))
        if not source.is_file():
            raise SystemExit(f"kvcrush: {source} not found: run `swift build -c release --product KVCrushC` first "
                             "(or set KVCRUSH_LIBRARY)")
        shutil.copyfile(source, HERE / "kvcrush" / "libKVCrushC.so")
        super().run()


setup(cmdclass={"build_py": BuildWithLibrary})
