"""Typed settings sections: one frozen dataclass per owner, kebab-case keys, strict parsing.

Every run-config key has exactly one owner: a field of one section (run, task, local
solver, or one algorithm's settings). A field is declared with :func:`setting`, which
holds its default and its one-line description (shown by ``simulate --help``); its range
check lives in the owning class's ``__post_init__``. Flower passes settings as a flat
mapping of kebab-case keys (``context.run_config``): :func:`from_mapping` maps
``adaptive-bits`` to ``adaptive_bits``, converts the value to the field's type and
rejects unknown keys with a message listing the known ones.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import field, fields
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def setting(default: Any, help: str) -> Any:  # noqa: A002 - argparse's word
    """A settings field with its default and one-line description."""
    return field(default=default, metadata={"help": help})


def key_of(name: str) -> str:
    """``adaptive_bits`` -> ``adaptive-bits``."""
    return name.replace("_", "-")


def describe(cls: type) -> list[tuple[str, Any, str, Any]]:
    """(key, type, help, default) of every field of a settings class."""
    return [
        (key_of(f.name), f.type, f.metadata.get("help", ""), f.default)
        for f in fields(cls)  # type: ignore[arg-type]
    ]


def coerce(key: str, kind: Any, value: Any) -> Any:
    """Convert a run-config value to the field's type, or raise a ValueError naming it."""
    if kind in (bool, "bool"):
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if kind in (int, "int"):
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return operator.index(value)  # exact, however large
        if isinstance(value, str):
            try:
                return int(value.strip())  # exact; "1e3" and "10.0" go through float below
            except ValueError:
                pass
        try:
            ok = not isinstance(value, bool) and float(value).is_integer()
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return int(float(value))
    if kind in (float, "float"):
        if isinstance(value, bool):
            raise ValueError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, got {value!r}") from None
        except OverflowError:
            raise ValueError(
                f"{key} is beyond the float range (an integer of {len(str(value))} digits)"
            ) from None
    return str(value)


_TYPED = (bool, "bool", int, "int", float, "float")


def coerce_fields(settings: Any) -> None:
    """Convert every bool / int / float field of a frozen settings object as
    :func:`from_mapping` does (first thing in each settings class's ``__post_init__``):
    an object built in Python then means what the same values in a run config mean
    (``adaptive_bits="false"`` is False, ``lr="0.1"`` is 0.1), or a ValueError names
    the setting. A str field keeps its value (its check says what it accepts)."""
    for f in fields(settings):
        if f.type in _TYPED:
            value = getattr(settings, f.name)
            coerced = coerce(key_of(f.name), f.type, value)
            if coerced is not value:
                object.__setattr__(settings, f.name, coerced)


def from_mapping(cls: type[T], mapping: Mapping[str, Any]) -> T:
    """Build settings class ``cls`` from kebab- or snake-case keys; unknown keys raise."""
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    kwargs, unknown = {}, []
    for key, value in mapping.items():
        name = key.replace("-", "_")
        if name in known:
            kwargs[name] = coerce(key_of(name), known[name].type, value)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {sorted(unknown)}; known keys: {', '.join(keys_of(cls))}"
        )
    return cls(**kwargs)


def keys_of(*classes: type) -> list[str]:
    """Sorted kebab-case keys of settings classes."""
    return sorted({key_of(f.name) for cls in classes for f in fields(cls)})  # type: ignore[arg-type]


def split_keys(
    mapping: Mapping[str, Any], sections: Iterable[type]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Route each key to every section that has it (a key shared by inheritance, e.g.
    ``codec``, reaches each algorithm's section): (one dict per section, unknown keys)."""
    sections = list(sections)
    owners: dict[str, list[int]] = {}
    for i, cls in enumerate(sections):
        for key in keys_of(cls):
            owners.setdefault(key, []).append(i)
    parts: list[dict[str, Any]] = [{} for _ in sections]
    unknown = []
    for key, value in mapping.items():
        k = key_of(key)
        if k in owners:
            for i in owners[k]:
                parts[i][k] = value
        else:
            unknown.append(key)
    return parts, unknown


def declaring_class(cls: type, name: str) -> type:
    """The class of ``cls``'s MRO that declares field ``name`` (its one owner)."""
    return next(c for c in reversed(cls.__mro__) if name in c.__dict__.get("__annotations__", {}))


def as_record(settings: Any) -> dict[str, Any]:
    """Kebab-case dict of a settings object (what travels in a Flower ConfigRecord)."""
    return {key_of(f.name): getattr(settings, f.name) for f in fields(settings)}


def _finite(value: float) -> bool:
    """``math.isfinite``, True for any int (however large: no float conversion)."""
    return isinstance(value, int) or math.isfinite(value)


def positive(key: str, value: float, automatic: bool = False) -> None:
    """Raise unless value is finite and > 0 (``automatic``: the message says that 0, which
    the caller lets through, means automatic)."""
    if not (value > 0 and _finite(value)):
        zero = " (0: automatic)" if automatic else ""
        raise ValueError(f"{key} must be a finite number > 0{zero}, got {value}")


def positive_int(text: str) -> int:
    """argparse type of a whole number >= 1 (the scripts' ``--iterations``, ...)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a whole number >= 1, got {value}")
    return value


def at_least(key: str, value: float, low: float) -> None:
    """Raise unless value is finite and >= low."""
    if not (value >= low and _finite(value)):
        raise ValueError(f"{key} must be a finite number >= {low:g}, got {value}")


def one_of(key: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise unless value is one of choices (naming the closest choice of a misspelt
    string: at most 2 edits away, 1 for choices of up to 4 letters)."""
    choices = tuple(choices)
    if value in choices:
        return
    best = closest(value, [str(c) for c in choices]) if isinstance(value, str) else None
    hint = f": did you mean {best!r}?" if best is not None else ""
    raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}{hint}")


def closest(word: str, known: Iterable[str]) -> str | None:
    """The one of ``known`` that ``word`` (lower-cased) looks like a misspelling of: at
    most 2 edits away (1 for words of up to 4 letters); None if there is none."""
    edits, best = min(((edit_distance(word.lower(), k), k) for k in known), default=(0, None))
    if best is None or edits > (1 if len(best) <= 4 else 2):
        return None
    return best


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions from a to b."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]
