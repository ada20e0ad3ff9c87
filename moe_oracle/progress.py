"""Progress on stderr: on a terminal a tqdm bar; elsewhere (a CI log) one plain line per tenth, or per
step (``every_step``: steps that take seconds each); nothing at all when ``enabled`` is False (the
API's default, the CLI's ``-q``)."""

from __future__ import annotations

import sys

__all__ = ["Progress"]


class Progress:
    def __init__(self, total: int, what: str, stream=None, every_step: bool = False, enabled: bool = True):
        self.total, self.what, self.done, self.every_step, self.enabled = total, what, 0, every_step, enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_tenth = -1
        self._bar = None
        if enabled and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, file=self.stream, leave=True, dynamic_ncols=True)

    def step(self, detail: str = "") -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(detail, refresh=False)
            self._bar.update(1)
            return
        tenth = 10 * self.done // max(self.total, 1)
        if self.every_step or tenth != self._last_tenth or self.done == self.total:
            self._last_tenth = tenth
            print(f"{self.done}/{self.total} {self.what}" + (f", {detail}" if detail else ""), file=self.stream,
                  flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
