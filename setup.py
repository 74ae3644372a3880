"""pip and pipx installs from the source tree. The project's metadata is in pyproject.toml; this adds one step.

The manifest schema is published once, as the top-level manifest.schema.json. The package
reads it at pilot/update/manifest.schema.json, a copy that is not kept in git: build_py
makes it from the top-level file, as build/build.py does for the .pyz archive, so a wheel
can never carry a schema other than the published one. The sdist carries the top-level
file, so a wheel built from the sdist gets it too.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SCHEMA = "manifest.schema.json"
PACKAGED_SCHEMA = Path("pilot", "update", SCHEMA)
BUILD_BASE = ".setuptools-build"  # not setuptools' default build/: that is where Pilot's build scripts live


class BuildPyWithSchema(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / PACKAGED_SCHEMA
        self.mkpath(str(target.parent))
        self.copy_file(SCHEMA, str(target), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PACKAGED_SCHEMA)]

    def get_source_files(self) -> list[str]:
        return [*super().get_source_files(), SCHEMA]


setup(cmdclass={"build_py": BuildPyWithSchema}, options={"build": {"build_base": BUILD_BASE}})
