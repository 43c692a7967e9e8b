"""One generic loader: YAML data -> frozen dataclasses, driven by their type hints.

A section of the file is a frozen dataclass; each of its fields is a key, with
its type and its default declared once, there. Constraints ride along as
`Annotated[...]` metadata (a range, a size, a duration, a file relative to the
configuration file). The loader reads the keys in the order they are declared,
refuses the keys nobody declared, then calls the section's `validate(where)`
if it has one (the checks that relate two keys). Every error is one line
naming the key path (« bals[2].type: must be one of ... »).

Hand-written rather than msgspec or pydantic: their messages (« Expected `int`,
got `str` - at `$.listeners[0].port` ») would have to be translated to the
relay's, which is most of the work; this stays small and adds no dependency.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Protocol, TypeVar, runtime_checkable

from mss_relay.sizes import parse_duration, parse_size

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


@dataclass(frozen=True, slots=True)
class Where:
    """A key path in the file, and the folder relative paths start from."""

    path: str
    base: Path

    def key(self, key: str) -> Where:
        return Where(f"{self.path}.{key}" if self.path else key, self.base)

    def item(self, index: int) -> Where:
        return Where(f"{self.path}[{index}]", self.base)

    def fail(self, message: str) -> NoReturn:
        raise ConfigError(self.path, message)


@runtime_checkable
class Validated(Protocol):
    def validate(self, where: Where) -> None: ...


# Constraints, as Annotated metadata.
@dataclass(frozen=True, slots=True)
class Range:
    """A whole number from low to high."""

    low: int
    high: int


@dataclass(frozen=True, slots=True)
class Size:
    """A number of bytes, or "20MiB", "60 MB"."""


@dataclass(frozen=True, slots=True)
class Duration:
    """Seconds, or "30s", "15m", "1h"; more than zero unless positive=False."""

    positive: bool = True


@dataclass(frozen=True, slots=True)
class File:
    """A path relative to the configuration file's folder."""

    must_exist: bool = False


@dataclass(frozen=True, slots=True)
class Fold:
    """Applied to the value once read (a normal form: stripped, lower case)."""

    fold: Callable[[str], str]


@dataclass(frozen=True, slots=True)
class Convert:
    """A reader of its own for a key that fits no plain type."""

    read: Callable[[object, Where], object]


@dataclass(frozen=True, slots=True)
class DefaultBy:
    """A default computed from the keys declared before (REQUIRED: required)."""

    default: Callable[[Mapping[str, object]], object]


@dataclass(frozen=True, slots=True)
class Overlay:
    """Constraints for the fields of a dataclass declared elsewhere (in core/)."""

    fields: Mapping[str, tuple[object, ...]]


REQUIRED = object()
MAPPING = "must be a mapping of keys to values"


def load(cls: type[T], raw: object, where: Where, overlay: Overlay | None = None) -> T:
    """One section: its keys in declaration order, unknown keys refused, then validate()."""
    if not isinstance(raw, dict):
        where.fail(MAPPING)
    hints = typing.get_type_hints(cls, include_extras=True)
    values: dict[str, object] = {}
    names = [f.name for f in dataclasses.fields(cls)]
    for f in dataclasses.fields(cls):
        hint, meta = _split(hints[f.name])
        if overlay is not None:
            meta += overlay.fields.get(f.name, ())
        values[f.name] = _field(f, hint, meta, raw.get(f.name), values, where.key(f.name))
    for key in raw:
        if key not in names:
            where.key(str(key)).fail(f"unknown key (expected one of: {', '.join(sorted(names))})")
    section = cls(**values)
    if isinstance(section, Validated):
        section.validate(where)
    return section


def _split(hint: object) -> tuple[object, tuple[object, ...]]:
    if typing.get_origin(hint) is Annotated:
        return hint.__origin__, tuple(hint.__metadata__)  # type: ignore[attr-defined]
    return hint, ()


def _field(
    f: dataclasses.Field[object],
    hint: object,
    meta: tuple[object, ...],
    raw: object,
    earlier: Mapping[str, object],
    where: Where,
) -> object:
    default: object = REQUIRED
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    for m in meta:
        if isinstance(m, DefaultBy):
            default = m.default(earlier)
    required = default is REQUIRED
    if raw is None:  # an explicit null is a key left out
        if dataclasses.is_dataclass(hint):
            raw = {}  # a section left out: its keys' defaults
        elif required:
            where.fail("is required")
        elif default is not None and any(isinstance(m, File) for m in meta):
            raw = str(default)  # a default path is relative to the file too
        else:
            return default
    return _read(hint, meta, raw, where, required)


def _read(
    hint: object, meta: tuple[object, ...], raw: object, where: Where, required: bool
) -> object:
    for m in meta:
        if isinstance(m, Convert):
            return m.read(raw, where)
        if isinstance(m, Overlay) and isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return load(hint, raw, where, m)
    if typing.get_origin(hint) in (types.UnionType, typing.Union):  # X | None: may be left out
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        hint, more = _split(hint)
        meta += more
    origin = typing.get_origin(hint)
    if origin is tuple:
        item_hint, item_meta = _split(typing.get_args(hint)[0])
        if not isinstance(raw, list):
            where.fail("must be a list")
        return tuple(_read(item_hint, item_meta, v, where.item(i), True) for i, v in enumerate(raw))
    if hint is bool:
        if not isinstance(raw, bool):
            where.fail("must be true or false")
        return raw
    if hint is int:
        return _whole(meta, raw, where)
    if hint is float:
        return _seconds(meta, raw, where)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return load(hint, raw, where)
    text = _text(raw, where, required)
    for m in meta:
        if isinstance(m, Fold):
            text = m.fold(text)
    if hint is str:
        return text
    if hint is Path:
        file = next(m for m in meta if isinstance(m, File))
        resolved = (where.base / text).resolve()
        if file.must_exist and not resolved.is_file():
            # A folder given for a file is a different mistake from a typo.
            what = "is a directory, not a file" if resolved.is_dir() else "file not found"
            where.fail(f"{what}: {resolved}")
        return resolved
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        choices = [str(member.value) for member in hint]
        if text not in choices:
            where.fail("must be one of " + ", ".join(choices))
        return hint(text)
    raise TypeError(f"{where.path}: no reader for {hint!r}")  # a schema mistake, not the user's


def _text(raw: object, where: Where, required: bool) -> str:
    if not isinstance(raw, str):
        where.fail("must be a string")
    if required and not raw.strip():
        where.fail("must not be empty")
    return raw


def _whole(meta: tuple[object, ...], raw: object, where: Where) -> int:
    for m in meta:
        if isinstance(m, Size):
            try:
                return parse_size(raw)
            except ValueError as error:
                where.fail(str(error))
    (bounds,) = [m for m in meta if isinstance(m, Range)]
    if isinstance(raw, bool) or not isinstance(raw, int):
        where.fail("must be a whole number")
    if not bounds.low <= raw <= bounds.high:
        where.fail(f"must be between {bounds.low} and {bounds.high}")
    return raw


def _seconds(meta: tuple[object, ...], raw: object, where: Where) -> float:
    for m in meta:
        if isinstance(m, Duration):
            try:
                seconds = parse_duration(raw)
            except ValueError as error:
                where.fail(str(error))
            if m.positive and seconds <= 0:
                where.fail("must be more than zero")
            return seconds
    # A plain float: a positive number, as written (no unit).
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        where.fail("must be a positive number")
    return float(raw)
