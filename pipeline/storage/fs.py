"""Local paths and object-store URIs behind one small fsspec interface."""

from __future__ import annotations

import posixpath
import uuid

import fsspec


def url_to_fs(uri: str):
    """(filesystem, path) for a local path or a URI such as ``s3://bucket/key``."""
    return fsspec.core.url_to_fs(str(uri))


def is_local(uri: str) -> bool:
    return "://" not in str(uri) or str(uri).startswith("file://")


def join(base: str, *parts: str) -> str:
    """Join path parts onto a path or URI with forward slashes."""
    base = str(base)
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    return posixpath.join(base, *parts)


def protocol_of(uri: str) -> str:
    return str(uri).split("://", 1)[0] if "://" in str(uri) else ""


def unstrip(path: str, like: str) -> str:
    """Turn a filesystem-native path back into a URI of the same scheme as ``like``."""
    proto = protocol_of(like)
    return f"{proto}://{path}" if proto and proto != "file" else path


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` so readers see the whole file or none of it.

    Locally: temporary name + rename. On object stores a single PUT is already atomic.
    """
    fs, path = url_to_fs(uri)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    if protocol_of(uri) in ("", "file"):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    else:
        with fs.open(path, "wb") as f:
            f.write(data)


def read_bytes(uri: str) -> bytes:
    fs, path = url_to_fs(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def exists(uri: str) -> bool:
    fs, path = url_to_fs(uri)
    return fs.exists(path)
