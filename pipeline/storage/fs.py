"""Local paths and object-store URIs behind one small fsspec interface."""

from __future__ import annotations

import os
import posixpath
import re
import uuid

import fsspec

from pipeline.errors import ParameterError

# The schemes a catalog's songs may name: local files and object stores. http(s) only when a
# user asks (`--allow-http`): a manifest must not make workers fetch arbitrary URLs with the
# cluster's network position and credentials. GENRES_URI_SCHEMES (comma-separated) replaces the
# list; Ray workers see it through the job's runtime env.
SCHEMES = ("file", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
SCHEMES_ENV = "GENRES_URI_SCHEMES"


def url_to_fs(uri: str):
    """(filesystem, path) for a local path or a URI such as ``s3://bucket/key``."""
    options = {}
    if protocol_of(uri) in ("s3", "s3a") and os.environ.get("AWS_ENDPOINT_URL"):
        # explicit, so fsspec's cache of filesystems is keyed by it: a process whose endpoint
        # changed must not reuse a filesystem bound to the old one
        options["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    return fsspec.core.url_to_fs(str(uri), **options)


def is_local(uri: str) -> bool:
    return "://" not in str(uri) or str(uri).startswith("file://")


def join(base: str, *parts: str) -> str:
    """Join path parts onto a path or URI with forward slashes."""
    base = str(base)
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    return posixpath.join(base, *parts)


def allowed_schemes() -> tuple[str, ...]:
    value = os.environ.get(SCHEMES_ENV, "")
    return tuple(s.strip().lower() for s in value.split(",") if s.strip()) or SCHEMES


def scheme_problem(uri: str) -> str | None:
    """Why ``uri`` may not be read (its scheme is not allowed), or None."""
    scheme = protocol_of(uri).lower() or "file"
    if scheme in allowed_schemes():
        return None
    hint = " (pass --allow-http to read http(s) URIs)" if scheme in ("http", "https") else ""
    return (f"{redact(uri)}: scheme {scheme}:// is not allowed; allowed: "
            f"{', '.join(allowed_schemes())}{hint}")


def redact(uri: str) -> str:
    """``uri`` as it may be logged or stored: without a query string or fragment (presigned
    URLs carry their signature there) and without user:password@."""
    uri = str(uri)
    if "://" in uri:  # a local path has no user:password@ (the check: 1 us a song of ~3)
        uri = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", uri)
    for mark in ("?", "#"):
        if mark in uri:
            uri = uri.split(mark, 1)[0] + mark + "..."
    return uri


def scrub(text: str) -> str:
    """``text`` (an error message) with every URI in it redacted (see :func:`redact`)."""
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+", lambda m: redact(m.group(0)), str(text))


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


def check_ours(uri: str, marker: str, what: str) -> None:
    """Refuse to delete or replace ``uri`` unless it is empty or holds ``marker`` (a file this
    project writes into every folder it creates): never remove a folder of someone else's."""
    fs, path = url_to_fs(uri)
    if not fs.exists(path):
        return
    if not fs.isdir(path) or (fs.ls(path) and not fs.exists(posixpath.join(path, marker))):
        raise ParameterError(f"{uri} exists and is not {what} (no {marker}); it is left "
                              f"alone: choose another --out or remove it yourself")
