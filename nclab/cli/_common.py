"""Helpers shared by the subcommands: parsing lists and reporting bad input."""

from __future__ import annotations

import functools
import json
import math
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


def parse_float_list(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(t) for t in text.split(",") if t.strip() != ""]
    except ValueError:
        fail(f"{name} must be a comma-separated list of numbers, got {text!r}")


def parse_int_list(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    out = []
    for t in text.split(","):
        t = t.strip()
        if not t:
            continue
        try:
            v = float(t)
        except ValueError:
            fail(f"{name} must be a comma-separated list of integers, got {text!r}")
        if not math.isfinite(v) or v != int(v):
            fail(f"{name} must be finite integers, got {t!r}")
        out.append(int(v))
    return out


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, allow_nan=True))
