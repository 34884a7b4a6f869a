"""Fingerprints of export files, so a run can skip an export that did not change.

An input's fingerprint covers what decides its rows: the adapter, its options, and the bytes of
every file its `path` option names (a file, a glob, or a folder, read recursively; names and
contents both count). Inputs that are not files (a live OOAPI endpoint: `base_url`) have no
fingerprint and are always read. Hashing is streamed, 1 MiB at a time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .adapter import AdapterContext

_CHUNK = 1 << 20


def input_files(base_dir: Path, options: dict[str, Any]) -> list[Path] | None:
    """The files an adapter with these options reads, sorted; None if it reads no files."""
    path = options.get("path")
    if not isinstance(path, str) or options.get("base_url"):
        return None
    found: list[Path] = []
    for entry in AdapterContext(source="", base_dir=base_dir).resolve(path):
        if entry.is_dir():
            found.extend(sorted(p for p in entry.rglob("*") if p.is_file()))
        elif entry.is_file():
            found.append(entry)
    return sorted(found)


def fingerprint(base_dir: Path, adapter: str, options: dict[str, Any], *extra: str | bytes) -> str | None:
    """The fingerprint of one input, or None when it is not made of files."""
    files = input_files(base_dir, options)
    if files is None:
        return None
    digest = hashlib.sha256()
    digest.update(json.dumps([adapter, options], sort_keys=True, default=str).encode())
    for part in extra:
        digest.update(b"\x1e" + (part if isinstance(part, bytes) else part.encode()))
    for file in files:
        digest.update(b"\x1d" + str(file).encode() + b"\x1f")
        with open(file, "rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
    return digest.hexdigest()
