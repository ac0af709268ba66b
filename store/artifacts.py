"""Content-addressed artifact files: `<root>/<sha[:2]>/<sha><suffix>`.

A file is written to a temporary name in its final folder, fsynced, then renamed over the final name
(atomic on POSIX and Windows), and the folder is fsynced so the rename itself survives a crash. A
reader therefore sees either no file or the whole file, and two writers of the same bytes produce
the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hybridnas.store.models import StoreError

WEIGHTS_SUFFIX = ".safetensors"
_CHUNK = 1 << 20  # bytes read at a time when hashing a file


class ArtifactError(StoreError):
    """An artifact file is missing or its bytes do not match the recorded sha256."""


@dataclass(frozen=True)
class Blob:
    relpath: str  # relative to the artifacts root, with forward slashes
    sha256: str
    bytes: int


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_safetensors(data: bytes | bytearray | memoryview, argument: str = "weights") -> None:
    """Reject bytes that are not a safetensors file: 8-byte little-endian header size, then a JSON object.

    Checked before anything is written, so a caller that passes e.g. a pickle never leaves a file behind.
    """
    view = memoryview(data)
    if len(view) < 8:
        raise ValueError(f"{argument}: {len(view)} bytes is too short for a safetensors file")
    n = int.from_bytes(view[:8], "little")
    if n < 2 or 8 + n > len(view):
        raise ValueError(f"{argument}: header size {n} does not fit in {len(view)} bytes; not a safetensors file")
    try:
        header = json.loads(bytes(view[8 : 8 + n]))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{argument}: header is not JSON; not a safetensors file") from None
    if not isinstance(header, dict):
        raise ValueError(f"{argument}: header is not a JSON object; not a safetensors file")


def blob_relpath(sha: str, suffix: str) -> str:
    return f"{sha[:2]}/{sha}{suffix}"


def _fsync_dir(path: Path) -> None:
    # Directory fsync makes the rename durable; not possible on Windows, where rename is already durable.
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_blob(root: Path, data: bytes | bytearray | memoryview, suffix: str = WEIGHTS_SUFFIX) -> Blob:
    """Store `data` under its sha256; returns where. An intact existing copy is kept as it is."""
    sha = sha256_bytes(data)
    rel = blob_relpath(sha, suffix)
    final = root / rel
    if final.is_file() and sha256_file(final) == sha:
        return Blob(rel, sha, len(data))
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{sha[:16]}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)
    return Blob(rel, sha, len(data))


def resolve(root: Path, path: str) -> Path:
    """An artifact row's path as a file: relative paths live under the artifacts root."""
    p = Path(path)
    return p if p.is_absolute() else root / p


def verify(path: Path, sha: str) -> Path:
    """Return `path` if its bytes hash to `sha`; ArtifactError otherwise."""
    if not path.is_file():
        raise ArtifactError(f"artifact {path} is missing (expected sha256 {sha})")
    actual = sha256_file(path)
    if actual != sha:
        raise ArtifactError(f"artifact {path} is corrupt: sha256 {actual}, recorded {sha}")
    return path
