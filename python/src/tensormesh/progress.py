"""The progress display of ``Job.wait(progress=True)``.

tqdm when it is importable (it copes with notebooks and odd terminals);
otherwise one ``\\r``-rewritten line on stderr when stderr is a terminal,
and one plain line per change of the count when it is not (a log file
full of carriage returns helps nobody). Nothing here talks to the node:
it is fed the job records the event stream brings.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Dict, Optional, TextIO, Tuple

__all__ = ["ProgressDisplay"]


def _unit(view: Dict[str, Any]) -> str:
    """What a job's progress counts: training rounds, or shards."""
    return "rounds" if view.get("op") == "train" else "shards"


class ProgressDisplay:
    """Shows one job's progress from its records; ``close()`` ends the line."""

    def __init__(self, job_id: str, stream: Optional[TextIO] = None, width: int = 30) -> None:
        self._id = job_id
        self._stream: TextIO = stream if stream is not None else sys.stderr
        self._width = width
        self._start = time.monotonic()
        self._last_plain: Optional[Tuple[int, int, str]] = None
        self._wrote_tty = False
        self._bar: Any = None
        try:
            from tqdm.auto import tqdm  # type: ignore[import-not-found, import-untyped, unused-ignore]
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self._bar = tqdm(total=0, desc=f"job {job_id[:8]}", file=self._stream, leave=True, unit="")
        isatty = getattr(self._stream, "isatty", None)
        self._tty = bool(isatty()) if callable(isatty) else False

    def update(self, view: Dict[str, Any]) -> None:
        p = view.get("progress") or {}
        done, total = int(p.get("done", 0)), int(p.get("total", 0))
        state = str(view.get("state", "?"))
        if self._bar is not None:
            if self._bar.total != total:
                self._bar.total = total
            self._bar.unit = " " + _unit(view)
            self._bar.n = done
            self._bar.set_postfix_str(state, refresh=False)
            self._bar.refresh()
            return
        if self._tty:
            frac = done / total if total else 0.0
            filled = round(frac * self._width)
            elapsed = time.monotonic() - self._start
            self._stream.write(
                f"\r[{'#' * filled}{'.' * (self._width - filled)}] {done}/{total} {_unit(view)}, {state}, {elapsed:.1f}s\x1b[K"
            )
            self._stream.flush()
            self._wrote_tty = True
            return
        key = (done, total, state)
        if key != self._last_plain:
            self._last_plain = key
            self._stream.write(f"{self._id} {state} {done}/{total} {_unit(view)}\n")
            self._stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._wrote_tty:
            self._stream.write("\n")
            self._stream.flush()
            self._wrote_tty = False
