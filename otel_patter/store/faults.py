"""TEST-ONLY disk fault injection at the store's write seam (`FileOps`). Off unless the environment asks.

Reliability tests use it to show that a full or read-only disk refuses requests (UNAVAILABLE / 503 +
Retry-After) instead of losing them, that `/readyz` says why, and that service resumes when space
returns. Production never sets the variable; without it this module is not even imported.

`OTEL_PATTER_FAULTS` (read once, at start) turns it on; its value is the initial rule list, `none` for
no faults yet:

    <error>:<target>[:partial][,<error>:<target>[:partial]...]

    error   enospc | erofs | edquot | eio
    target  wal (a call's spans.jsonl) | index | pending | envelope (metadata.json, otel-patter.json)
            | mkdir | all
    partial the failing write first writes half of its bytes, then fails (what a disk that fills up
            mid-write does), so the store's cut-back of torn appends is exercised too

While the file `<log_dir>/.otel-patter-faults` exists, its content (same syntax; empty means no
faults) replaces the rules; it is looked at on every write, so a test flips the disk "full" and
back without any admin API. The store's readiness probe (`state/.probe`) fails under any rule: it
asks whether the disk takes writes at all.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otel_patter.store.envelope_store import FileOps

log = logging.getLogger("otel_patter.store.faults")

ENV = "OTEL_PATTER_FAULTS"
CONTROL_FILE = ".otel-patter-faults"
ERRORS = {"enospc": errno.ENOSPC, "erofs": errno.EROFS, "edquot": errno.EDQUOT, "eio": errno.EIO}
TARGETS = ("wal", "index", "pending", "envelope", "mkdir", "all")
_KINDS = {"spans.jsonl": "wal", "index.jsonl": "index", "pending.jsonl": "pending", "metadata.json": "envelope",
          "otel-patter.json": "envelope", ".probe": "probe"}


@dataclass(frozen=True)
class Rule:
    errno: int
    target: str
    partial: bool = False

    def matches(self, kind: str) -> bool:
        return kind == "probe" or self.target in ("all", kind)


def parse_rules(text: str) -> tuple[Rule, ...]:
    """`enospc:wal,erofs:all:partial` -> rules; `none` or blank -> none. Raises ValueError."""
    rules: list[Rule] = []
    for item in text.replace("\n", ",").split(","):
        item = item.strip().lower()
        if not item or item == "none":
            continue
        parts = item.split(":")
        if len(parts) not in (2, 3) or parts[0] not in ERRORS or parts[1] not in TARGETS or (
                len(parts) == 3 and parts[2] != "partial"):
            raise ValueError(f"bad fault rule {item!r}: want <{'|'.join(ERRORS)}>:<{'|'.join(TARGETS)}>[:partial]")
        rules.append(Rule(ERRORS[parts[0]], parts[1], len(parts) == 3))
    return tuple(rules)


def kind_of(path: str | Path) -> str:
    return _KINDS.get(os.path.basename(path), "other")


class FaultyFileOps(FileOps):
    """`FileOps` that fails the writes the rules name, as the kernel would."""

    def __init__(self, fsync: bool, log_dir: Path, rules: tuple[Rule, ...] = ()) -> None:
        super().__init__(fsync)
        self.control = log_dir / CONTROL_FILE
        self.initial = rules
        self.rules = rules
        self.injected = 0  # faults raised so far
        self._stamp: tuple[int, int] | None = None
        self._partial: Rule | None = None

    def _current(self) -> tuple[Rule, ...]:
        try:
            st = os.stat(self.control)
        except FileNotFoundError:
            self._stamp = None
            self.rules = self.initial
            return self.rules
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.rules = parse_rules(self.control.read_text())
            except (OSError, ValueError) as e:
                log.warning("fault control file ignored: %s", e)
        return self.rules

    def _rule(self, kind: str) -> Rule | None:
        return next((r for r in self._current() if r.matches(kind)), None)

    def _fail(self, rule: Rule, path: str | Path) -> OSError:
        self.injected += 1
        return OSError(rule.errno, os.strerror(rule.errno), str(path))

    def _write_all(self, fd: int, data: bytes) -> None:
        rule, self._partial = self._partial, None
        if rule is None:
            super()._write_all(fd, data)
            return
        os.write(fd, data[: len(data) // 2])
        raise OSError(rule.errno, os.strerror(rule.errno))

    def _faulty(self, write: Callable[[Any, bytes], None], path: str | Path, data: bytes) -> None:
        """Run one of FileOps' writes under the rule for this path: fail at once, or (partial) halfway."""
        rule = self._rule(kind_of(path))
        if rule is not None and not rule.partial:
            raise self._fail(rule, path)
        if rule is not None:
            self.injected += 1
            self._partial = rule
        try:
            write(path, data)
        finally:
            self._partial = None

    def append(self, path: str | Path, data: bytes) -> None:
        self._faulty(super().append, path, data)

    def write_atomic(self, path: str | Path, data: bytes) -> None:
        self._faulty(super().write_atomic, path, data)

    def mkdirs(self, path: str | Path) -> None:
        rule = self._rule("mkdir")
        if rule is not None and not os.path.isdir(path):
            raise self._fail(rule, path)
        super().mkdirs(path)


def from_env(log_dir: Path, fsync: bool, env: dict[str, str] | None = None) -> FileOps | None:
    """The faulty seam when `OTEL_PATTER_FAULTS` is set (raises ValueError on a bad rule), else None."""
    value = (os.environ if env is None else env).get(ENV)
    if value is None:
        return None
    ops = FaultyFileOps(fsync, log_dir, parse_rules(value))
    log.warning("TEST-ONLY disk fault injection is on (%s=%r; control file %s)", ENV, value, ops.control)
    return ops
