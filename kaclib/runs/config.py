"""Run configurations: reading ``config.json``, differences, fingerprints, ``KEY=VALUE`` overrides."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

from .atomic import _sha256
from .layout import CONFIG_FILE, RunDirError


def _flatten(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _normalise(obj):
    """JSON round trip, so tuples and lists (and int/float keys) compare as saved."""
    return json.loads(json.dumps(obj))


def config_diff(saved: Mapping, new: Mapping, ignore: Iterable[str] = ()) -> list[tuple[str, object, object]]:
    """Differing fields of two (nested) config dicts as ``(dotted.key, saved, new)``, sorted.

    Keys under ``ignore`` (top-level or dotted) are skipped.  Missing keys show as ``<missing>``.
    """
    a, b = _flatten(_normalise(saved)), _flatten(_normalise(new))
    ignore = set(ignore)
    missing = "<missing>"
    diff = []
    for key in sorted(set(a) | set(b)):
        parts = key.split(".")
        if any(".".join(parts[:i]) in ignore for i in range(1, len(parts) + 1)):
            continue
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            diff.append((key, va, vb))
    return diff


def config_fingerprint(config: Mapping) -> str:
    """SHA-256 of a config's canonical JSON (key order and formatting do not matter)."""
    blob = json.dumps(_normalise(dict(config)), sort_keys=True, separators=(",", ":"))
    return _sha256(blob.encode())


def _parse_json_object(data: bytes, path: Path) -> dict:
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise RunDirError(f"{path}: not a text file (not UTF-8): damaged or not a kaclib file") from None
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(obj, dict):
        raise RunDirError(f"{path}: expected a JSON object, got a JSON {type(obj).__name__}")
    return obj


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON file holding an object; anything else is a :class:`RunDirError` naming the file."""
    path = Path(path)
    return _parse_json_object(path.read_bytes(), path)


def read_config(run_dir: str | os.PathLike) -> dict:
    """``config.json`` of a run directory (a dict; any other content is a :class:`RunDirError`)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {run_dir}: not a run directory")
    return _parse_json_object(path.read_bytes(), path)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(d: Mapping, items: Iterable[str]) -> dict:
    """Apply ``KEY=VALUE`` overrides to a copy of a config dict.

    ``KEY=VALUE`` overrides (``model.base_channels=32`` for nested fields) on a copy of a config
    dict; values are parsed as JSON when possible (``steps=10`` is an int, ``f=exp`` a string).
    """
    d = json.loads(json.dumps(d))
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        *parents, leaf = key.split(".")
        node = d
        for p in parents:
            if not isinstance(node.get(p, {}), dict):
                raise ValueError(f"--set {item}: {p!r} is not a nested field")
            node = node.setdefault(p, {})
        node[leaf] = _parse_value(value)
    return d
