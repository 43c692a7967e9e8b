"""The one bootstrap: `python bench/NAME.py` runs as `python -m bench.NAME`.

Run as a file, a module of this package has no package: sys.path[0] is bench/
itself, so neither `bench` nor `tests.support` (nor relative imports) resolve.
Every entry point begins with

    if not TYPE_CHECKING and not __package__:  # python bench/NAME.py
        import _script

        _script.rerun(__file__)

which lands here (bench/ is sys.path[0]): the checkout's root replaces it and
the same module is run again as part of the package, with its command line,
then the process exits with its status. `python -m bench.NAME` (from the root)
skips the block. The `TYPE_CHECKING` guard keeps mypy from resolving `_script`
as a top-level module: under mypy it is bench._script, used by nobody.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def rerun(script: str) -> None:
    path = Path(script).resolve()
    sys.path[0] = str(path.parents[1])
    runpy.run_module(f"{path.parent.name}.{path.stem}", run_name="__main__", alter_sys=True)
    sys.exit(0)
