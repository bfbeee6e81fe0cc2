"""`unirec` command line: argument parsing only; every command calls one component function.

Each subcommand is the `cmd` of the matching `dvc.yaml` stage. Common options: `--params` (the
params file) and `--set key=value` (dotted overrides, e.g. `--set split.cold_item_fraction=0`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
import yaml

from components.steps import ORDER, STEP, STEPS, Step

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

app = typer.Typer(
    help="unirec: one LoRA-tuned LLM for every recommendation task, as a reproducible pipeline.\n\n"
    f"Pipeline steps in order: {' → '.join(ORDER)}. "
    "Run them all with `make run` (the Prefect flow, `unirec flow run`) or `dvc repro`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read (the only config source).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Dotted override KEY=VALUE (repeatable).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]


def _overrides(pairs: list[str] | None) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise typer.BadParameter(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _one_line(exc: BaseException) -> str:
    """An exception as one line for the user: our own errors already name the file and what to do."""
    message = getattr(exc, "message", None) or str(exc)  # MlflowException keeps its text in .message
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if len(lines) > 1:
        text += " | " + " | ".join(lines[1:6])
    ours = isinstance(exc, (ValueError, RuntimeError, OSError)) and type(exc).__module__.startswith(
        ("components", "builtins", "flows"))
    return text if ours else f"{type(exc).__name__}: {text} (run with --debug for the traceback)"


def _run(step: str, params_path: Path, sets: list[str] | None, debug: bool, fn: Callable[[object], object],
         needs_params: bool = True) -> None:
    # Our own loggers speak at INFO; third-party libraries (GX, DVC, pandera) only at WARNING.
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s", stream=sys.stderr)
    for name in ("components", "unirec", "flows"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.INFO)
    from components.config import load_params

    start = time.perf_counter()
    try:
        params = load_params(params_path, _overrides(sets)) if needs_params else None
        report = fn(params)
    except (KeyboardInterrupt, typer.Exit):
        raise
    except Exception as exc:  # noqa: BLE001 - the error contract: one line, the traceback only with --debug
        if debug:
            raise
        typer.secho(f"unirec {step} failed: {_one_line(exc)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from None
    summary = getattr(report, "summary", None)
    typer.echo(summary() if callable(summary) else str(report))
    typer.echo(f"{step} done in {time.perf_counter() - start:.1f} s")


def _step_command(step: Step) -> Callable[..., None]:
    """`unirec <step>`: parse the common options and run the step's component function."""
    def command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
        _run(step.name, params, set_, debug, step.function())

    command.__doc__ = step.help
    return command


for _step in STEPS:
    if _step.name != "promote":  # promote takes --rollback (below)
        app.command(_step.name, help=_step.help)(_step_command(_step))


@app.command("promote", help=STEP["promote"].help)
def promote(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False,
            rollback: Annotated[bool, typer.Option("--rollback", help="Move the champion alias back to the "
                                                   "previous champion.")] = False) -> None:
    step = STEP["promote"].function()
    _run("promote", params, set_, debug, lambda p: step(p, rollback=rollback))


def _ids(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@app.command()
def recommend(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False,
              user: Annotated[str | None, typer.Option("--user", "-u", help="Original user id.")] = None,
              history: Annotated[str | None, typer.Option("--history", help="Comma-separated item ids, oldest "
                                                          "first (default: the user's stored history).")] = None,
              task: Annotated[str, typer.Option("--task", "-t", help="Task (next_item, query, ctr, ...).")] = "next_item",
              k: Annotated[int, typer.Option("-k", help="Items to recommend.")] = 10,
              query: Annotated[str | None, typer.Option("--query", "-q", help="Text query (task query) or "
                                                        "masked passage (task infill).")] = None,
              items: Annotated[str | None, typer.Option("--items", help="Comma-separated item ids: targets "
                                                        "(ctr, rating) or candidates (candidate_choice).")] = None,
              objective: Annotated[str, typer.Option("--objective", help="multi_objective objective.")] = "",
              template_id: Annotated[str, typer.Option("--template-id", help="Prompt template (default: the "
                                                       "task's first seen template).")] = "",
              alias: Annotated[str | None, typer.Option("--alias", help="Registry alias (default: champion).")]
              = None) -> None:
    """Print recommendations (item ids, titles, scores; or generated text) of the registered champion
    (models:/<registry.model_name>@champion) for a user id or an explicit history."""
    from components.registry import recommend as step

    _run("recommend", params, set_, debug, lambda p: step(
        p, user, _ids(history), task, k, query, items=_ids(items), objective=objective, template_id=template_id,
        alias=alias))


benchmark_app = typer.Typer(help="Measured comparisons written to metrics/*.json.", no_args_is_help=True)
app.add_typer(benchmark_app, name="benchmark")


@benchmark_app.command("train")
def benchmark_train(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Training throughput of unirec (items as fused vectors, logits only at answer positions) vs a
    naive LLM recommender (same backbone and LoRA; titles as text; full-vocabulary logits at every
    position) on the same examples, in one run → metrics/bench_train.json."""
    from components.bench_train import benchmark_train as step

    _run("benchmark train", params, set_, debug, step)


@benchmark_app.command("retrieval")
def benchmark_retrieval(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
                        debug: DebugOpt = False) -> None:
    """Per-user latency and HR@K of sequence-in-set-out retrieval (one forward pass + index top-K) vs
    trie-constrained beam search over item titles, on the same trained model and test prompts
    → metrics/bench_retrieval.json."""
    from components.bench_retrieval import benchmark_retrieval as step

    _run("benchmark retrieval", params, set_, debug, step)


@benchmark_app.command("index")
def benchmark_index(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """faiss flat / IVF / HNSW over benchmark.index_items synthetic item vectors of the model's output width:
    build time, memory, recall@K against exact search, p50 / p95 latency of one user's top-K
    → metrics/bench_index.json."""
    from components.bench_index import benchmark_index as step

    _run("benchmark index", params, set_, debug, step)


report_app = typer.Typer(help="Documents generated from the committed metrics.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("readme")
def report_readme(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False,
                  readme: Annotated[Path | None, typer.Option("--readme", help="README to update (default: "
                                                              "README.md next to params.yaml).")] = None,
                  check: Annotated[bool, typer.Option("--check", help="Only verify; fail if the table is out "
                                                      "of date.")] = False) -> None:
    """Rewrite the results table of README.md (between its markers) from metrics/eval.json and the retrieval
    benchmark, so the README cannot drift from the committed figures."""
    from components.evaluation.readme import update_readme

    _run("report readme", params, set_, debug, lambda p: update_readme(p, readme, check))


flow_app = typer.Typer(help="Prefect flows (flows/): the whole pipeline with per-step caching, and the daily "
                       "champion evaluation. Offline: Prefect's ephemeral API server, PREFECT_HOME=.prefect/.",
                       no_args_is_help=True)
app.add_typer(flow_app, name="flow")


@flow_app.command("run")
def flow_run(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
             skip: Annotated[list[str] | None, typer.Option("--skip", help="Step not to run (repeatable).")] = None,
             refresh: Annotated[list[str] | None, typer.Option("--refresh", help="Step to rerun even if cached.")] = None,
             as_json: Annotated[bool, typer.Option("--json", help="Print the step outcomes as JSON.")] = False
             ) -> None:
    """The pipeline as one Prefect flow (what `make run` runs): every step cached on the sha256 of its inputs
    and its params (from dvc.yaml), then index, evaluate, register (alias challenger) and promote (champion
    only through the gate); ends with a per-step summary and fails naming the failed step."""
    unknown = sorted(set(skip or []) | set(refresh or []) - set(ORDER))
    if unknown:
        raise typer.BadParameter(f"unknown steps {unknown}; steps: {', '.join(ORDER)}")
    from flows.pipeline import run as run_flow

    raise typer.Exit(run_flow(str(params), _overrides(set_), skip or [], refresh or [], as_json))


@flow_app.command("champion-eval")
def flow_champion_eval(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
                       alias: Annotated[str | None, typer.Option("--alias", help="Registry alias (default: champion).")]
                       = None) -> None:
    """Download the registered champion and evaluate it on the current splits and baselines (MLflow experiment
    `<experiment>.champion-eval`, files under orchestration.champion_eval_dir)."""
    from flows.champion_eval import run as eval_flow

    raise typer.Exit(eval_flow(str(params), _overrides(set_), alias))


@flow_app.command("pools")
def flow_pools(prefect_file: Annotated[Path, typer.Option("--prefect-file", help="The deployments file whose work "
                                                          "pools to create.")] = Path("prefect.yaml"),
               debug: DebugOpt = False) -> None:
    """Create every work pool the deployments of prefect.yaml name and the Prefect API (PREFECT_API_URL) lacks, as
    process pools; existing pools are left as they are (the first half of `make deploy`)."""
    from flows.deploy import deploy_pools

    _run("flow pools", Path("params.yaml"), None, debug, lambda _p: deploy_pools(prefect_file), needs_params=False)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
