"""Helpers shared by the subcommands: parsing lists, checking output folders and reporting bad input.

Every error line of every nclab command starts with ``error:`` (see :func:`fail` and the command group in
``nclab.cli``, which formats click's own usage errors the same way).
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import sys

import click


def fail(message: str) -> None:
    """Print one clear line and exit with status 2 (bad usage / bad input)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def friendly_errors(fn):
    """Turn the library's ValueError/TypeError into one line and exit 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError, OverflowError, FileNotFoundError) as exc:
            fail(str(exc))

    return wrapper


def _items(text: str, name: str, kind: str) -> list[str]:
    """The comma-separated items of ``text``; one error for an empty list or an empty item (``3,,4``)."""
    items = [t.strip() for t in text.split(",")]
    if any(t == "" for t in items):
        where = "is empty" if len(items) == 1 else f"has an empty item (item {items.index('') + 1} of {len(items)})"
        fail(f"{name} must be a comma-separated list of {kind}, e.g. 3,4; {text!r} {where}")
    return items


def parse_float_list(text: str | None, name: str) -> list[float] | None:
    """``"1e-3,2e-3"`` -> [0.001, 0.002]; None stays None; empty items are refused."""
    if text is None:
        return None
    out = []
    for t in _items(text, name, "numbers"):
        try:
            out.append(float(t))
        except ValueError:
            fail(f"{name} must be a comma-separated list of numbers, got {text!r} ({t!r} is not a number)")
    return out


def parse_int_list(text: str | None, name: str) -> list[int] | None:
    """``"200,100,50"`` -> [200, 100, 50]; None stays None; empty items and fractions are refused."""
    if text is None:
        return None
    out = []
    for t in _items(text, name, "integers"):
        try:
            out.append(int(t))
            continue
        except ValueError:
            pass
        try:
            v = float(t)
        except ValueError:
            fail(f"{name} must be a comma-separated list of integers, got {text!r} ({t!r} is not a number)")
        if not math.isfinite(v) or v != int(v):
            fail(f"{name} must be finite integers, got {t!r}")
        out.append(int(v))
    return out


def _jsonable(obj):
    """``obj`` with NaN/inf as None and numpy scalars/arrays as Python values (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return _jsonable(tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def echo_json(obj) -> None:
    """Print ``obj`` as strict JSON (RFC 8259): NaN and infinities become null, never bare tokens."""
    click.echo(json.dumps(_jsonable(obj), indent=2, allow_nan=False))


def check_out_dir(path, name: str = "--out") -> pathlib.Path:
    """``path`` as a Path if it can be (or already is) a writable output folder, else one ValueError.

    Refused, with the reason in the message: an empty path, a NUL byte, a component or path longer than
    the file system allows, an existing file at ``path``, an ancestor that is a file, a nearest
    existing ancestor that is not writable or on a read-only file system. Nothing is created.
    """
    if path is None or (isinstance(path, (str, bytes)) and not path.strip()):
        raise ValueError(f"{name} must be a folder path, got {path!r}")
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:
        raise ValueError(f"{name} must be a folder path, got {path!r}") from None
    if "\0" in text:
        raise ValueError(f"{name} must not contain a NUL byte, got {text!r}")
    p = pathlib.Path(text).expanduser()
    absolute = pathlib.Path(os.path.abspath(p))
    existing = absolute
    while True:
        try:
            if existing.exists() or existing == existing.parent:
                break
        except OSError:  # e.g. a component that is too long or a folder we may not search
            pass
        existing = existing.parent
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in absolute.parts:
        if len(os.fsencode(part)) > name_max:
            raise ValueError(f"{name} {text!r}: the name {part[:24]!r}... is {len(os.fsencode(part))} bytes long, "
                             f"more than the {name_max} this file system allows")
    if len(os.fsencode(str(absolute))) >= path_max:
        raise ValueError(f"{name}: the path is {len(os.fsencode(str(absolute)))} bytes long, more than the "
                         f"{path_max} this file system allows")
    if existing == absolute and not existing.is_dir():
        raise ValueError(f"{name} {text} exists and is a file, not a folder")
    if not existing.is_dir():
        raise ValueError(f"{name} {text}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {text}: permission denied, cannot create or write in {existing}")
    try:
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            raise ValueError(f"{name} {text}: {existing} is on a read-only file system")
    except (OSError, AttributeError):
        pass
    return p


def parse_seeds(text: str | None, name: str = "--seeds") -> list[int] | None:
    """``"0-63"`` or ``"0,3,5-9"`` -> the seeds in increasing order, each once; None stays None."""
    if text is None:
        return None
    seeds: set[int] = set()
    for t in _items(text, name, "seeds or ranges"):
        lo, sep, hi = t.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            fail(f"{name} must be seeds and ranges like 0-63 or 0,3,5-9, got {text!r} ({t!r})")
        if a < 0 or b < a:
            fail(f"{name}: {t!r} is not a range of non-negative seeds (low-high, low <= high)")
        if b - a >= 1_000_000:
            fail(f"{name}: {t!r} holds more than 1,000,000 seeds")
        seeds.update(range(a, b + 1))
    return sorted(seeds)
