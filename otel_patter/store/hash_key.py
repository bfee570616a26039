"""The HMAC key for `hash_only` phone redaction: from OTEL_PATTER_HASH_KEY, else generated once.

A generated key is kept (mode 0600) in the log dir so hashes stay stable across
restarts; an unkeyed hash of a phone number is never written.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from otel_patter.store.paths import makedirs_private

KEY_FILE = "state/hash.key"


def load_or_create_hash_key(log_dir: Path, env: dict[str, str] | None = None) -> bytes:
    env = dict(os.environ) if env is None else env
    given = env.get("OTEL_PATTER_HASH_KEY")
    if given:
        return given.encode()
    path = log_dir / KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        pass
    makedirs_private(path.parent, 0o700)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, key.hex().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return key
