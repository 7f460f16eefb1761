"""`Literal[...]` choice fields of config dataclasses, checked in one place.

Below config.py and models/ (both read it): a dataclass types a choice as `Literal["a", "b"]`, and
`check_choices(self, "section")` in its `__post_init__` validates every such field with the one-line error
`--section.key='x': choose one of a, b`; `slm.config` calls `check_choice` when it builds sections from YAML and
lists the choices in `--help`.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

from .errors import SlmError


def literal_choices(cls: type) -> dict[str, tuple]:
    """{field name: allowed values} for each `Literal[...]`-typed field of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    return {f.name: typing.get_args(hints[f.name]) for f in dataclasses.fields(cls)
            if typing.get_origin(hints[f.name]) is Literal}


def check_choice(value: Any, choices: tuple, flag: str) -> Any:
    """`value` if it is one of `choices`, else the one-line error naming the flag and the choices.

    YAML reads true/false/yes/no as booleans, so a boolean is taken as its lower-case name when that is a choice
    (`compile: true` -> "true")."""
    if isinstance(value, bool) and str(value).lower() in choices:
        value = str(value).lower()
    if isinstance(value, bool) or value not in choices:
        raise SlmError(f"{flag}={value!r}: choose one of {', '.join(map(str, choices))}")
    return value


def check_choices(section: Any, name: str) -> None:
    """Validate (and normalise, see `check_choice`) every Literal field of config section `section` (`--name.*`)."""
    for key, choices in literal_choices(type(section)).items():
        setattr(section, key, check_choice(getattr(section, key), choices, f"--{name}.{key}"))
