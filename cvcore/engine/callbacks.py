"""Callbacks: how code outside the engine follows a run (MLflow logging, progress, tests).

A callback is any object with some of these methods; missing ones are skipped. In a data-parallel
run the callbacks are pickled into rank 0's process and called there (only there):

- ``on_fit_start(info: dict)``: ``{"epochs", "start_epoch", "steps_per_epoch", "device"}``
- ``on_epoch_start(epoch: int, steps: int)``
- ``on_step(epoch: int, step: int, logs: dict[str, float])``: ``{"loss", "lr", "images"}``
- ``on_epoch_end(epoch: int, metrics: dict[str, float])``: a flat dict of numbers (train losses,
  lr, throughput, val metrics), the same row that goes into ``history.parquet``. It is called
  after that epoch's checkpoint is on disk, so an exception here loses nothing.
- ``on_fit_end(result: FitResult)``
- ``on_exception(exc: BaseException)``: the run is failing (clean up, e.g. close a display).

cvcore knows no MLflow: the tasks layer passes a callback that logs ``metrics`` at ``epoch``.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def notify(callbacks: Iterable[Any], event: str, *args: Any) -> None:
    """Call ``event`` on every callback that defines it, in order."""
    for callback in callbacks:
        method = getattr(callback, event, None)
        if method is not None:
            method(*args)


class ProgressBar:
    """A rich progress bar per epoch with the running loss and images/s, and a line per epoch.

    Leave it out of ``callbacks`` for a quiet run (tests, batch jobs).
    """

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._epochs = 0

    def __getstate__(self) -> dict:
        # A data-parallel run calls the callbacks in its rank 0 process (cvcore.engine.distributed):
        # the bar travels there without its console (a lock and a file) and opens one on stderr.
        return {"_epochs": self._epochs}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self._epochs = state["_epochs"]

    def on_fit_start(self, info: dict) -> None:
        self._epochs = info["epochs"]
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._progress.start()

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        self._task = self._progress.add_task(f"epoch {epoch}/{self._epochs}", total=steps, loss=float("nan"), ips=0.0)
        self._start, self._images, self._loss_sum, self._steps = time.perf_counter(), 0, 0.0, 0

    def on_step(self, epoch: int, step: int, logs: dict[str, float]) -> None:
        self._images += int(logs["images"])
        self._loss_sum += logs["loss"]
        self._steps += 1
        ips = self._images / max(time.perf_counter() - self._start, 1e-9)
        self._progress.update(self._task, advance=1, loss=self._loss_sum / self._steps, ips=ips)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        shown = {k: v for k, v in metrics.items() if k.startswith("val/") or k in ("train/loss", "lr")}
        self._progress.console.print(
            f"epoch {epoch}: " + "  ".join(f"{k} {v:.4g}" for k, v in shown.items()), highlight=False
        )

    def on_fit_end(self, result: Any) -> None:
        self._stop()

    def on_exception(self, exc: BaseException) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
