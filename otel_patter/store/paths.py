"""Directory naming shared with the SDK's call log (research §3).

`safe_path_segment` is the SDK's rule, so the SDK and otel-patter name a call's
directory alike. When the rule changed the id, 8 hex of its SHA-256 are appended so
two different ids never share a directory (the SDK would merge `a/b` and `a_b`).
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import UTC, datetime
from pathlib import Path

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_CALL_ID_LEN = 256


def safe_path_segment(value: str, max_len: int = 64) -> str:
    """getpatter `utils/log_sanitize.safe_path_segment`, byte for byte in behaviour."""
    s = _CONTROL.sub("", value)
    s = _UNSAFE.sub("_", s)
    s = s[:max_len].strip(".")
    return s or "unknown"


def call_dir_name(call_id: str) -> str:
    safe = safe_path_segment(call_id)
    if safe != call_id:
        safe += "-" + hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return safe


def valid_call_id(call_id: str) -> bool:
    """A call id is an id: printable, bounded. Anything else is not rolled up."""
    return 0 < len(call_id) <= MAX_CALL_ID_LEN and call_id.isprintable()


def day_path(start_ns: int) -> str:
    d = datetime.fromtimestamp(start_ns / 1e9 if start_ns > 0 else 0, tz=UTC)
    return f"{d.year:04d}/{d.month:02d}/{d.day:02d}"


def relative_call_dir(call_id: str, start_ns: int) -> str:
    return f"calls/{day_path(start_ns)}/{call_dir_name(call_id)}"


def inside(root: Path, candidate: Path) -> bool:
    """True when `candidate` resolves (symlinks followed) to a path under `root`."""
    try:
        candidate.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def makedirs_private(path: Path | str, mode: int = 0o700) -> None:
    """`os.makedirs(path, mode, exist_ok=True)`, but every directory it creates gets `mode`, not only the last
    one (os.makedirs gives intermediate ones 0o777 & ~umask: 0755, or 0777 under umask 0). The directory is
    made first and its parents only when it says they are missing: one syscall for a new call's directory."""
    path = os.fspath(path)
    try:
        _mkdir(path, mode)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if not parent or parent == path:
            raise
        makedirs_private(parent, mode)
        _mkdir(path, mode)


def _mkdir(path: str, mode: int) -> None:
    """`os.mkdir`; a directory already there is fine, anything else there is not."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
