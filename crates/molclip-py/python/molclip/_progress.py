"""Progress bars for molclip's long work: tqdm's (a widget in Jupyter, text in a terminal).

The Rust side calls these methods, one phase at a time; each call holds the GIL briefly.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from tqdm.auto import tqdm


class Bars:
    """One tqdm bar per phase (scanning, checking frames, training, embedding...)."""

    def __init__(self, leave: bool = False) -> None:
        self._bar: Optional[Any] = None
        self._leave = leave

    def start(self, what: str, total: int) -> None:
        self.finish()
        self._bar = tqdm(total=total or None, desc=what, leave=self._leave, dynamic_ncols=True)

    def set_total(self, total: int) -> None:
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set_position(self, position: int) -> None:
        if self._bar is not None:
            self._bar.update(position - self._bar.n)

    def message(self, message: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(message, refresh=False)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def note(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, file=sys.stderr)


def sink(progress: Any) -> Optional[Any]:
    """What the native functions take: ``True`` gives tqdm bars, ``False``/``None`` nothing,
    and any other object with the same methods as :class:`Bars` is used as it is."""
    if progress is True:
        return Bars()
    if progress is False or progress is None:
        return None
    return progress
