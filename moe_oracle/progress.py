"""Progress on stderr: a bar redrawn in place on a terminal, one plain line per tenth otherwise (a log
file stays readable), or per step (``every_step``: steps that take seconds each)."""

from __future__ import annotations

import sys

__all__ = ["Progress"]


class Progress:
    def __init__(self, total: int, what: str, stream=None, every_step: bool = False):
        self.total, self.what, self.done, self.every_step = total, what, 0, every_step
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_tenth = -1

    def step(self, detail: str = "") -> None:
        self.done += 1
        text = f"{self.done}/{self.total} {self.what}" + (f", {detail}" if detail else "")
        if self.tty:
            bar = "#" * int(30 * self.done / max(self.total, 1))
            print(f"\r[{bar:<30}] {text}", end="", file=self.stream, flush=True)
            return
        tenth = 10 * self.done // max(self.total, 1)
        if self.every_step or tenth != self._last_tenth or self.done == self.total:
            self._last_tenth = tenth
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty and self.total:
            print(file=self.stream, flush=True)
