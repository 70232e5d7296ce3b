"""What `sigma0 run` shows a person: live progress per step, then one table of what happened and why."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from sigma0 import plan


def highlight(step: str, summary: Mapping[str, Any]) -> str:
    """One line of the figures that matter for a finished step."""
    s = summary
    if step == "harvest":
        return (f"{s.get('harvested', '?')} read, {s.get('kept', '?')} kept; {s.get('excluded', '?')} excluded, "
                f"{s.get('duplicates', '?')} duplicates, {_total(s.get('dropped'))} dropped")
    if step == "verify":
        return (f"{s.get('passed', '?')}/{s.get('total', '?')} passed in {s.get('sandbox', '?')}; "
                f"{_total(s.get('dropped'))} dropped")
    if step == "dataset":
        shown = f"{s.get('rows', '?')} rows ({s.get('base_rows', 0)} base + {s.get('verified_rows', '?')} verified)"
        return shown + (f"; {s['excluded']} base rows excluded (eval overlap)" if s.get("excluded") else "")
    if step == "import":
        return f"adapter {s.get('adapter_digest', '?')} ({s.get('files', '?')} files, {s.get('bytes', '?')} bytes)"
    if step == "train":
        return (f"{s.get('steps', '?')} steps on {s.get('device', '?')}, loss {_fmt(s.get('loss_first'))} → "
                f"{_fmt(s.get('loss_last'))}")
    if step == "generate":
        results = dict(s.get("results") or {})
        return ", ".join(f"{label} {r.get('generated', '?')}" for label, r in sorted(results.items())) + " completions"
    if step.startswith("score"):
        return f"pass@1 {_fmt(s.get('pass_at_1'))} ({s.get('passed', '?')}/{s.get('total', '?')}) in {s.get('sandbox')}"
    if step == "decide":
        return f"{s.get('outcome', '?')}: {s.get('reason', '')}"
    return ""


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value if value is not None else "-")


def _total(dropped: Any) -> int:
    return sum(dict(dropped or {}).values())


def _reasons(dropped: Any) -> str:
    if not dropped:
        return "none"
    return ", ".join(f"{reason} {count}" for reason, count in sorted(dict(dropped).items()))


class RichReporter:
    """Live progress: one line per step with a spinner, its figures when it ends, and the elapsed time."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                 console=console, transient=False)
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def step_started(self, step: plan.Step, resumed: bool) -> None:
        note = " (resumed)" if resumed else ""
        self.tasks[step.name] = self.progress.add_task(f"[bold]{step.name:<16}[/] {step.phase}{note}…", total=1)

    def step_finished(self, step: plan.Step, result: plan.StepResult, seconds: float) -> None:
        if result.state == "succeeded":
            text = f"[green]✔[/] [bold]{step.name:<16}[/] {highlight(step.name, result.summary)}"
        else:
            text = f"[red]✘[/] [bold]{step.name:<16}[/] [red]{result.message}[/]"
        self.progress.update(self.tasks[step.name], description=text, completed=1)

    def step_skipped(self, step: plan.Step, result: plan.StepResult) -> None:
        task = self.progress.add_task(
            f"[dim]✔ {step.name:<16} done earlier: {highlight(step.name, result.summary)}[/]", total=1, completed=1)
        self.tasks[step.name] = task


def result_table(name: str, state: plan.CycleState, finished: Mapping[str, Any]) -> Table:
    steps = state.steps

    def summary(step: str) -> Mapping[str, Any]:
        result = steps.get(step)
        return result.summary if result else {}

    harvest, verify, dataset, train = summary("harvest"), summary("verify"), summary("dataset"), summary("train")
    candidate, incumbent, decide = summary("score-candidate"), summary("score-incumbent"), summary("decide")
    published = state.published or {}
    outcome = finished.get("outcome") or "—"
    why = str(published.get("reason") or finished.get("reason") or "")

    table = Table(title=f"TrainingCycle {name}: {finished.get('phase')}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("harvested", str(harvest.get("harvested", "—")))
    table.add_row("excluded (eval overlap)", f"{harvest.get('excluded', '—')} harvested, "
                  f"{dataset.get('excluded', '—')} base")
    table.add_row("duplicates", str(harvest.get("duplicates", "—")))
    table.add_row("verified", f"{verify.get('passed', '—')} of {verify.get('total', '—')} "
                  f"(sandbox: {verify.get('sandbox', '—')})")
    table.add_row("dropped at harvest", _reasons(harvest.get("dropped")))
    table.add_row("dropped at verify", _reasons(verify.get("dropped")))
    table.add_row("training rows / steps", f"{dataset.get('rows', '—')} / {train.get('steps', '—')}")
    if "import" in steps:
        table.add_row("imported candidate", str(summary("import").get("adapter_digest", "—")))
    report = finished.get("report")
    if report:  # a dry run: what would train
        for source, counts in dict(report.get("bySource") or {}).items():
            table.add_row(f"  from {PurePath(source).name}", ", ".join(f"{k} {v}" for k, v in dict(counts).items()))
        found = report.get("dataset")
        if found:
            table.add_row("would train on", f"{found['rows']} rows, {found['bytes']} bytes, {found['digest']}")
    table.add_row("candidate pass@1", _pass(candidate))
    incumbent_text = _pass(incumbent) if state.incumbent else (
        "— (a dry run reads no release)" if finished.get("report") else "— (no release yet)")
    table.add_row("incumbent pass@1", incumbent_text)
    for step, result in steps.items():
        if step.startswith("score-candidate-report"):
            suite = PurePath(str(result.summary.get("suite", step))).name
            table.add_row(f"report-only {suite}", _pass(result.summary) + " (not gated)")
    if decide.get("p_value") is not None:
        table.add_row("McNemar p-value", _fmt(decide.get("p_value")))
    table.add_row("decision", f"[bold]{outcome}[/]")
    table.add_row("why", why)
    if published.get("revision") is not None:
        table.add_row("release revision", str(published.get("revision")))
    return table


def _pass(summary: Mapping[str, Any]) -> str:
    if not summary:
        return "—"
    return f"{_fmt(summary.get('pass_at_1'))} ({summary.get('passed', '?')}/{summary.get('total', '?')})"
