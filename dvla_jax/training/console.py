"""What a person sees on the console: one summary line, phase progress bars with an ETA, and
the per-iteration lines of `metrics.MetricsWriter`.

Everything goes through one `rich` console on stdout, and only process 0 of a
multi-process run prints. On a terminal a phase shows a live bar (done/total, elapsed, ETA);
written to a file or a pipe, a phase prints one line when it starts and one when it ends
(with its count and duration), so a log still says what the run was doing and for how long.
"""

import contextlib
import datetime
import sys
import time
from typing import Iterator, Optional

import jax
import rich.console
import rich.progress

_CONSOLE: Optional[rich.console.Console] = None
_ACTIVE: Optional[rich.progress.Progress] = None  # The live display of the outermost phase.


def get() -> rich.console.Console:
  """The process's console (stdout; no syntax highlighting)."""
  global _CONSOLE
  if _CONSOLE is None or _CONSOLE.file is not sys.stdout:
    _CONSOLE = rich.console.Console(highlight=False, file=sys.stdout)
  return _CONSOLE


def enabled() -> bool:
  """Whether this process prints (process 0 only)."""
  return jax.process_index() == 0


def line(text: str, style: Optional[str] = None) -> None:
  """Prints one line (process 0 only)."""
  if enabled():
    get().print(text, style=style, soft_wrap=True)


class Phase:
  """A long phase's progress: call `advance()` as its units of work finish.

  It counts what is done (`done`); on a terminal it also moves its bar and shows
  "done/total unit" and an ETA when the total is known.
  """

  def __init__(self, progress: Optional[rich.progress.Progress] = None, task=None,
               total: Optional[float] = None, unit: str = ""):
    self._progress, self._task, self._total, self._unit = progress, task, total, unit
    self.done = 0
    self._show()

  def advance(self, amount: float = 1) -> None:
    self.done += amount
    if self._progress is not None:
      self._progress.advance(self._task, amount)
      self._show()

  def _show(self) -> None:
    if self._progress is not None and self._total is not None:
      self._progress.update(self._task, count=f"{self.done:g}/{self._total:g} {self._unit}",
                            eta="ETA")


@contextlib.contextmanager
def phase(description: str, total: Optional[float], unit: str = "steps") -> Iterator[Phase]:
  """Shows a progress bar with elapsed time and ETA while the `with` body runs.

  A phase inside another (an evaluation during SFT) is a second bar under the first.

  Args:
    description: what the phase is, e.g. "warm start: behaviour cloning".
    total: units of work in the phase; None for one of unknown length (a compile), which
      shows elapsed time only.
    unit: what a unit is, shown after the count.
  """
  global _ACTIVE
  if not enabled():
    yield Phase()
    return
  console = get()
  if not console.is_terminal:  # A log file or a pipe: a line when it starts and one at the end.
    console.print(f"{description} ...", soft_wrap=True)
    bar = Phase()
    start = time.perf_counter()
    yield bar
    took = datetime.timedelta(seconds=round(time.perf_counter() - start))
    done = f"{bar.done:g}/{total:g} {unit} " if total is not None else ""
    console.print(f"{description}: done, {done}in {took}", soft_wrap=True)
    return
  outer = _ACTIVE is None
  if outer:
    _ACTIVE = rich.progress.Progress(
        rich.progress.TextColumn("{task.description}"),
        rich.progress.BarColumn(bar_width=24),
        rich.progress.TextColumn("{task.fields[count]}"),
        rich.progress.TimeElapsedColumn(),
        rich.progress.TextColumn("{task.fields[eta]}"),
        rich.progress.TimeRemainingColumn(),
        console=console)
    _ACTIVE.start()
  progress = _ACTIVE
  task = progress.add_task(description, total=total, count="", eta="")
  bar = Phase(progress, task, total, unit)
  try:
    yield bar
  finally:
    if total is None:
      progress.update(task, total=1, completed=1)
    if outer:
      progress.stop()
      _ACTIVE = None
    else:
      progress.remove_task(task)
