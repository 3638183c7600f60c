"""Registration progress as a rich progress bar over recipes, with a line per finished variant."""

from __future__ import annotations

from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from sloserve.cli.output import console
from sloserve.variant import VariantRecord, VariantStatus

_STYLE = {VariantStatus.READY: "green", VariantStatus.SKIPPED: "yellow", VariantStatus.FAILED: "red"}


class RichProgress:
    def __init__(self) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
            transient=True,
        )
        self._task = self._progress.add_task("preparing", total=None, detail="")

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()

    def step(self, message: str) -> None:
        self._progress.update(self._task, detail=message)
        if not message.startswith(("batch", "Profiling")):
            console.log(message)

    def recipe_started(self, recipe: str, index: int, total: int) -> None:
        self._progress.update(self._task, description=recipe, total=total, completed=index, detail="building")

    def recipe_finished(self, record: VariantRecord) -> None:
        self._progress.advance(self._task)
        style = _STYLE[record.status]
        summary = ""
        if record.profile is not None:
            p = record.profile
            accuracy = f"{p.accuracy:.4f}" if p.accuracy is not None else "n/a"
            first = p.latency_ms[min(p.latency_ms)]
            summary = f" accuracy {accuracy}, p50 {first.p50_ms:.3f} ms at batch {min(p.latency_ms)}"
        reason = f" ({record.reason})" if record.reason else ""
        console.log(f"[{style}]{record.id}: {record.status.value}[/]{summary}{reason}")
