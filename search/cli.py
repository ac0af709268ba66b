"""`hybridnas campaign ...` and `hybridnas export`: launching, resuming and inspecting campaigns."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hybridnas.search.campaign import (
    Campaign,
    MAX_WORKERS,
    CampaignFileError,
    estimate_size,
    format_bytes,
    load_campaign,
    machine_memory_bytes,
    parse_campaign,
)
from hybridnas.search.controller import Controller, Event, LeaseLost, RunSummary
from hybridnas.search.api import executor_for
from hybridnas.workers import EXECUTORS, Executor
from hybridnas.search.export import export_candidate
from hybridnas.store import CampaignBusy, CampaignInfo, Store
from hybridnas.store.cli import (
    FormatOption,
    OutputFormat,
    StoreOption,
    campaign_list,
    campaign_show,
    open_store,
    emit,
    print_leaderboard,
)

campaign_app = typer.Typer(help="Launch, resume and inspect search campaigns.", no_args_is_help=True)
err = Console(stderr=True)
out = Console()



def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _open_for_writing(url: str | None, create: bool = True) -> Store:
    """Open the store a campaign writes to (creating it when `create`); one that cannot be opened or
    written (bad URL, missing driver, unreachable, corrupt, read-only) is `error: --store: ...`, exit 2."""
    from hybridnas.store.cli import store_failure
    from hybridnas.store.models import StoreOpenError

    try:
        return Store.open(url, create=create, readonly=False)
    except StoreOpenError as e:
        store_failure(e)


def _check_executor(kind: str | None) -> None:
    if kind is not None and kind not in EXECUTORS:
        fail(f"--executor: {kind!r} is not allowed; allowed: {', '.join(EXECUTORS)}")


def _executor(campaign: Campaign, kind: str | None, workers: int | None, address: str | None) -> Executor:
    """The executor the campaign runs on, with command-line overrides; bad options are usage errors."""
    _check_executor(kind)
    try:
        return executor_for(campaign, kind, workers, address)
    except (ValueError, OSError) as e:
        fail(f"--executor/--address/execution: {e}")
        raise


def _campaign(store: Store, name: str | None) -> CampaignInfo:
    """The named campaign (the most recent when None); one the store does not hold is exit 2."""
    try:
        return store.get_campaign(name)
    except LookupError as e:
        fail(str(e))
        raise  # unreachable; keeps type checkers quiet


def _load(file: Path, size_check: bool = True, **overrides: object) -> Campaign:
    try:
        return load_campaign(file, size_check=size_check, **overrides)
    except CampaignFileError as e:
        fail(escape(str(e)))  # the file's own text may look like console markup: print it as it is
        raise  # unreachable; keeps type checkers quiet


_NO_SIZE_CHECK_HELP = (
    "Skip the estimate of one evaluation's memory (task data, model, activations, hardware measurement) "
    "and training time, checked against this machine's memory and execution.timeout_s before anything runs "
    "(host memory only when execution.gpus_per_worker > 0). "
    "For workers larger than this machine (a cluster joined with --address) or an estimate known to be too high."
)


def _run(
    store: Store, campaign: Campaign, campaign_id: int, executor: Executor, export_dir: Path | None, force: bool = False
) -> RunSummary:
    """Run the controller with a progress bar; then print the leaderboard and export the winner.

    Ctrl-C (or SIGTERM) asks the controller to stop cleanly: in-flight work is handed back as queued
    and `campaign resume` picks it up. A second Ctrl-C interrupts at once (recorded results are kept).
    """
    f = campaign.file
    plain = f.search.successive_halving is None and f.search.reevaluate is None
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
        console=err,
        transient=False,
    )
    # With promotions or extra seeds the number of evaluations is not known in advance.
    task = progress.add_task(campaign.name, total=f.search.budget if plain else None, last="")

    def on_event(e: Event) -> None:
        if e.kind in ("done", "failed", "invalid"):
            progress.advance(task)
            mark = {"done": "[green]✓[/]", "failed": "[red]✗[/]", "invalid": "[red]![/]"}[e.kind]
            progress.console.print(f"  {mark} #{e.candidate_id} {e.label}  {e.detail}", highlight=False)
        elif e.kind == "resumed":
            progress.update(task, completed=controller.n_finished)
            progress.console.print(f"  [yellow]resumed[/] {e.detail}", highlight=False)
        elif e.kind in ("exhausted", "rejected", "promoted", "reseeded", "stopping"):
            progress.console.print(f"  [yellow]{e.kind}[/] {e.label} {e.detail}", highlight=False)
        progress.update(task, last=f"{executor.in_flight} running")

    controller = Controller(store, campaign, campaign_id, executor, on_event, force=force)

    def on_signal(signum: int, frame: object) -> None:
        if controller.stopping:  # second signal: interrupt now
            raise KeyboardInterrupt
        err.print("\nstopping: in-flight evaluations are handed back; Ctrl-C again to interrupt at once")
        controller.request_stop()

    # Handlers can only be set from the main thread (not, e.g., from a test runner's worker thread).
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        with progress:
            summary = controller.run()
    except CampaignBusy as e:
        fail(f"{e}; or take it over with `hybridnas campaign resume {campaign.name} --force`")
        raise
    except LeaseLost as e:  # the campaign is another controller's now: leave its status alone
        fail(str(e), code=1)
        raise
    except KeyboardInterrupt:
        store.set_campaign_status(campaign_id, "stopped")
        err.print(f"\ninterrupted; recorded results are kept. Continue with: hybridnas campaign resume {campaign.name}")
        raise typer.Exit(130)
    except Exception:
        store.set_campaign_status(campaign_id, "failed")
        err.print(f"the controller failed; recorded results are kept. After fixing the cause: hybridnas campaign resume {campaign.name}")
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        executor.close()
    extra = "".join(
        f", {n} {what}" for n, what in ((summary.promotions, "promotions"), (summary.reseeds, "extra seeds")) if n
    )
    err.print(
        f"{campaign.name}: {summary.evaluated} evaluated ({summary.failed} failed or invalid, {summary.rejected} rejected by constraints"
        f"{extra}) in {summary.wall_time_s:.1f}s" + (" — the space ran out of new designs" if summary.exhausted else "")
    )
    if summary.stopped:
        err.print(f"stopped; recorded results are kept. Continue with: hybridnas campaign resume {campaign.name}")
        return summary
    obj = f.objective
    print_leaderboard(store, campaign.name, metric=obj.metric, direction=obj.direction, limit=10, fmt="table")
    verdict = store.winner(campaign_id, obj.metric, obj.direction)
    err.print(verdict["text"], highlight=False)
    if export_dir is not None:
        board = store.leaderboard(campaign_id, metric=obj.metric, direction=obj.direction, limit=1)
        if board:
            path = export_candidate(store, board[0]["candidate_id"], export_dir / campaign.name)
            err.print(f"#1 (candidate {board[0]['candidate_id']}) exported to {path}")
    return summary


@campaign_app.command("launch")
def launch(
    file: Path = typer.Argument(..., help="Campaign YAML file."),
    store: StoreOption = None,
    name: Optional[str] = typer.Option(None, "--name", help="Override the campaign name from the file."),
    executor: Optional[str] = typer.Option(None, "--executor", help="ray | inprocess | replay (overrides the file)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, max=MAX_WORKERS, help="Evaluations in flight (overrides the file)."),
    address: Optional[str] = typer.Option(None, "--address", help="Join an existing Ray cluster."),
    export_dir: Path = typer.Option(Path("export"), "--export-dir", help="Export the winner to DIR/<campaign>/."),
    no_export: bool = typer.Option(False, "--no-export", help="Do not export the winner."),
    no_size_check: bool = typer.Option(False, "--no-size-check", help=_NO_SIZE_CHECK_HELP),
) -> None:
    """Validate FILE, create the campaign in the store, and run it to its budget."""
    _check_executor(executor)
    campaign = _load(file, size_check=not no_size_check, name=name)
    with _open_for_writing(store) as st:
        if st.campaign_exists(campaign.name):
            fail(f"name: campaign {campaign.name!r} already exists in {st.url}; resume it with "
                 f"`hybridnas campaign resume {campaign.name}` or pick another name with --name")
        ex = _executor(campaign, executor, workers, address)  # a bad option fails before the campaign is created
        campaign_id = st.create_campaign(campaign.name, campaign.config(), campaign.file.seed)
        _run(st, campaign, campaign_id, ex, None if no_export else export_dir)


@campaign_app.command("resume")
def resume(
    name: Optional[str] = typer.Argument(None, help="Campaign name (default: the most recent)."),
    store: StoreOption = None,
    executor: Optional[str] = typer.Option(None, "--executor", help="ray | inprocess | replay"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1),
    address: Optional[str] = typer.Option(None, "--address"),
    export_dir: Path = typer.Option(Path("export"), "--export-dir"),
    no_export: bool = typer.Option(False, "--no-export"),
    force: bool = typer.Option(False, "--force", help="Take the campaign over even if another controller's lease looks live."),
) -> None:
    """Continue a stopped or interrupted campaign: recorded results are kept, unfinished ones run again."""
    _check_executor(executor)
    with _open_for_writing(store, create=False) as st:
        info = _campaign(st, name)
        try:
            campaign = parse_campaign(info.config, f"(stored config of {info.name})")
        except CampaignFileError as e:
            fail(str(e))
        if info.status == "finished" and not _budget_left(st, info.id, campaign):
            out.print(f"{info.name} is finished: nothing left to run")
            return
        _run(st, campaign, info.id, _executor(campaign, executor, workers, address), None if no_export else export_dir, force)


def _budget_left(store: Store, campaign_id: int, campaign: Campaign) -> bool:
    evs = store.evaluations(campaign_id)
    unfinished = any(e.status in ("queued", "running") for e in evs)
    return unfinished or len({e.candidate_id for e in evs}) < campaign.file.search.budget


@campaign_app.command("stop")
def stop(
    name: Optional[str] = typer.Argument(None, help="Campaign name (default: the most recent)."),
    store: StoreOption = None,
    wait: float = typer.Option(0.0, "--wait", min=0, help="Seconds to wait for the controller to hand its work back."),
) -> None:
    """Ask a running campaign to end cleanly: in-flight evaluations go back to the queue for `resume`."""
    with _open_for_writing(store, create=False) as st:
        info = _campaign(st, name)
        if info.status in ("finished", "failed", "stopped") and info.lease_owner is None:
            out.print(f"{info.name} is {info.status} already; nothing to stop")
            return
        st.request_stop(info.id)
        if info.lease_owner is None:
            # No live controller: its process died without a word. Mark the campaign for resume.
            st.set_campaign_status(info.id, "stopped")
            out.print(f"{info.name}: no live controller; marked stopped. Continue with: hybridnas campaign resume {info.name}")
            return
        out.print(f"{info.name}: stop requested from controller {info.lease_owner}")
        deadline = time.monotonic() + wait
        while wait and time.monotonic() < deadline:
            if st.get_campaign_by_id(info.id).lease_owner is None:
                out.print(f"{info.name}: stopped ({st.get_campaign_by_id(info.id).status})")
                return
            time.sleep(0.5)
        if wait:
            fail(f"{info.name}: the controller has not stopped after {wait:g}s; it stops after its current evaluation", code=1)


@campaign_app.command("validate")
def validate(
    file: Path = typer.Argument(..., help="Campaign YAML file."),
    no_size_check: bool = typer.Option(False, "--no-size-check", help=_NO_SIZE_CHECK_HELP),
) -> None:
    """Check a campaign file without running it."""
    campaign = _load(file, size_check=not no_size_check)
    out.print(
        f"ok: {campaign.name} — task {campaign.task.name} (vocab {campaign.task.vocab_size}), "
        f"{campaign.space.mode} space of {campaign.space.size()} gene combinations, "
        f"{campaign.file.search.strategy} search, budget {campaign.file.search.budget}",
        highlight=False,
    )
    est = estimate_size(campaign)
    memory = machine_memory_bytes()
    of = f" of this machine's {format_bytes(memory)}" if memory else ""
    out.print(
        f"estimate for one evaluation of the largest design: {format_bytes(est.memory_bytes)} of memory{of}, "
        f"{est.params:,} parameters, {est.train_flops:.3g} training FLOPs" + (" (not checked: --no-size-check)" if no_size_check else ""),
        highlight=False,
    )


@campaign_app.command("list")
def list_(store: StoreOption = None, fmt: FormatOption = OutputFormat.table) -> None:
    """All campaigns in the store."""
    with open_store(store) as st:
        campaign_list(st, fmt)


@campaign_app.command("show")
def show(
    name: Optional[str] = typer.Argument(None, help="Campaign name (default: the most recent)."),
    store: StoreOption = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """One campaign: its status, counts and configuration."""
    with open_store(store) as st:
        campaign_show(st, name, fmt)


def export_command(
    candidate_id: int = typer.Argument(..., help="Candidate id (see `hybridnas query leaderboard`)."),
    out_dir: Path = typer.Option(..., "--out", help="Folder to write the export into."),
    store: StoreOption = None,
    name: Optional[str] = typer.Option(None, "--name", help="Module name (modeling_<name>.py)."),
) -> None:
    """Export a candidate as a standalone module: modeling_<name>.py, config.json, model.safetensors."""
    with open_store(store) as st:
        try:
            path = export_candidate(st, candidate_id, out_dir, name)
        except (LookupError, ValueError) as e:
            fail(str(e))
        out.print(f"exported candidate {candidate_id} to {path}")


def evaluate_command(
    export_dir: Path = typer.Argument(..., help="An export folder (from `hybridnas export` or a launch)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the fresh test data [default: one the campaign never used]."),
    num_test: Optional[int] = typer.Option(None, "--num-test", min=1, help="Fresh test sequences [default: as many as the campaign's]."),
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Re-score an export on freshly generated test data and compare with the score it was exported with."""
    from hybridnas.workers.rescore import rescore_export

    try:
        r = rescore_export(export_dir, seed=seed, num_test=num_test)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
        raise
    row = {
        "task": r.task,
        "trained_seed": r.trained_seed,
        "fresh_seed": r.seed,
        "sequences": r.num_sequences,
        "stored_accuracy": r.stored_accuracy,
        "fresh_accuracy": r.accuracy,
        "fresh_low": r.low,
        "fresh_high": r.high,
        "fresh_loss": r.loss,
        "margin": r.margin,
        "agree": r.agree,
    }
    if fmt != OutputFormat.table:
        emit([row], fmt)
        return
    stored = "n/a" if r.stored_accuracy is None else f"{r.stored_accuracy:.4f}"
    out.print(f"{export_dir}: {r.task}, trained with seed {r.trained_seed}")
    out.print(f"  stored accuracy  {stored}  (on {r.stored_num_test or '?'} test sequences)")
    out.print(f"  fresh accuracy   {r.accuracy:.4f}  95% interval [{r.low:.4f}, {r.high:.4f}]  ({r.num_sequences} sequences, seed {r.seed})")
    if r.agree is not None:
        diff = r.accuracy - r.stored_accuracy  # type: ignore[operator]
        verdict = "agree" if r.agree else "DIFFER"
        out.print(f"  difference {diff:+.4f}, allowed ±{r.margin:.4f} (1.96 standard errors of the difference): {verdict}")
