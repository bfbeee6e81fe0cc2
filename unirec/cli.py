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
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {pair!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
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


class _Console(logging.Handler):
    """Log records as plain lines on the CURRENT sys.stdout (sys.stderr with --debug), looked up per record."""

    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if self.debug else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never break a command
            self.handleError(record)


_OUR_LOGGERS = ("components", "unirec", "flows")


def _configure_output(debug: bool) -> Callable[[], None]:
    """Our loggers speak at INFO (DEBUG with --debug), third-party libraries (GX, DVC, pandera, warnings) only
    at WARNING. Without --debug every log line and warning goes to stdout with the summary, so stderr carries
    exactly the one-line error of a failed command; with --debug everything goes to stderr. Returns the undo
    (a command run in-process, e.g. by a test, leaves logging as it found it)."""
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", *_OUR_LOGGERS)}
    handler = _Console(debug)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    for name in _OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.INFO)
    logging.captureWarnings(True)

    def undo() -> None:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)

    return undo


def _guard(command: str, debug: bool, body: Callable[[], int | None]) -> None:
    """Run `body`; any exception becomes ONE line `unirec <command> failed: …` on stderr and exit code 1
    (`--debug`: the exception propagates with its traceback). A non-zero int from `body` is the exit code."""
    undo = _configure_output(debug)
    try:
        code = body()
    except (KeyboardInterrupt, typer.Exit):
        raise
    except Exception as exc:  # noqa: BLE001 - the error contract: one line, the traceback only with --debug
        if debug:
            raise
        typer.secho(f"unirec {command} failed: {_one_line(exc)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from None
    finally:
        undo()
    if code:
        raise typer.Exit(code=code)


def _run(step: str, params_path: Path, sets: list[str] | None, debug: bool, fn: Callable[[object], object]) -> None:
    """Load params (with the --set overrides), call the component function, print its summary."""
    def body() -> None:
        from components.config import load_params

        start = time.perf_counter()
        report = fn(load_params(params_path, _overrides(sets)))
        summary = getattr(report, "summary", None)
        typer.echo(summary() if callable(summary) else str(report))
        typer.echo(f"{step} done in {time.perf_counter() - start:.1f} s")

    _guard(step, debug, body)


def _step_command(step: Step) -> Callable[..., None]:
    """`unirec <step>`: parse the common options and run the step's component function."""
    def command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
        _run(step.name, params, set_, debug, lambda p: step.function()(p))

    command.__doc__ = step.help
    return command


for _step in STEPS:
    if _step.name != "promote":  # promote takes --rollback (below)
        app.command(_step.name, help=_step.help)(_step_command(_step))


@app.command("promote", help=STEP["promote"].help)
def promote(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False,
            rollback: Annotated[bool, typer.Option("--rollback", help="Move the champion alias back to the "
                                                   "previous champion.")] = False,
            strict: Annotated[bool, typer.Option("--strict", help="Exit with code 1 when the gate refuses the "
                                                 "challenger (default: a refusal is a successful run).")] = False
            ) -> None:
    _run("promote", params, set_, debug, lambda p: STEP["promote"].function()(p, rollback=rollback, strict=strict))


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
    def step(p: object, *args: object, **kwargs: object) -> object:
        from components.registry import recommend as component

        return component(p, *args, **kwargs)

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
    def step(p: object) -> object:
        from components.bench_train import benchmark_train

        return benchmark_train(p)

    _run("benchmark train", params, set_, debug, step)


@benchmark_app.command("retrieval")
def benchmark_retrieval(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
                        debug: DebugOpt = False) -> None:
    """Per-user latency and HR@K of sequence-in-set-out retrieval (one forward pass + index top-K) vs
    trie-constrained beam search over item titles, on the same trained model and test prompts
    → metrics/bench_retrieval.json."""
    def step(p: object) -> object:
        from components.bench_retrieval import benchmark_retrieval

        return benchmark_retrieval(p)

    _run("benchmark retrieval", params, set_, debug, step)


@benchmark_app.command("serving")
def benchmark_serving(url: Annotated[str, typer.Option("--url", help="The running scoring server, e.g. "
                                                     "http://127.0.0.1:5001 (`mlflow models serve`).")],
                      params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False,
                      note: Annotated[str, typer.Option("--note", help="What is served (recorded in the file's "
                                                        "meta), e.g. the model version.")] = "") -> None:
    """Latency per task and status classes of benchmark.serving_requests good and bad requests, sent one at a time
    to a running scoring server → metrics/bench_serving.json (a 5xx answer is a serving bug)."""
    def step(p: object) -> object:
        from components.registry.bench_serving import benchmark_serving as component

        return component(p, url, note=note)

    _run("benchmark serving", params, set_, debug, step)


@benchmark_app.command("index")
def benchmark_index(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """faiss flat / IVF / HNSW over benchmark.index_items synthetic item vectors of the model's output width:
    build time, memory, recall@K against exact search, p50 / p95 latency of one user's top-K
    → metrics/bench_index.json."""
    def step(p: object) -> object:
        from components.bench_index import benchmark_index as component

        return component(p)

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
    def step(p: object) -> object:
        from components.evaluation.readme import update_readme

        return update_readme(p, readme, check)

    _run("report readme", params, set_, debug, step)


flow_app = typer.Typer(help="Prefect flows (flows/): the whole pipeline with per-step caching, and the daily "
                       "champion evaluation. Offline: Prefect's ephemeral API server, PREFECT_HOME=.prefect/.",
                       no_args_is_help=True)
app.add_typer(flow_app, name="flow")


@flow_app.command("run")
def flow_run(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
             skip: Annotated[list[str] | None, typer.Option("--skip", help="Step not to run (repeatable).")] = None,
             refresh: Annotated[list[str] | None, typer.Option("--refresh", help="Step to rerun even if cached.")] = None,
             as_json: Annotated[bool, typer.Option("--json", help="Print the step outcomes as JSON.")] = False,
             debug: DebugOpt = False) -> None:
    """The pipeline as one Prefect flow (what `make run` runs): every step cached on the sha256 of its inputs
    and its params (from dvc.yaml), then index, evaluate, register (alias challenger) and promote (champion
    only through the gate); ends with a per-step summary and fails naming the failed step."""
    unknown = sorted((set(skip or []) | set(refresh or [])) - set(ORDER))
    if unknown:
        raise typer.BadParameter(f"unknown steps {unknown}; steps: {', '.join(ORDER)}")

    def body() -> int:
        from flows.pipeline import run as run_flow

        return run_flow(str(params), _overrides(set_), skip or [], refresh or [], as_json, debug=debug)

    _guard("flow run", debug, body)


@flow_app.command("champion-eval")
def flow_champion_eval(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
                       alias: Annotated[str | None, typer.Option("--alias", help="Registry alias (default: champion).")]
                       = None, debug: DebugOpt = False) -> None:
    """Download the registered champion and evaluate it on the current splits and baselines (MLflow experiment
    `<experiment>.champion-eval`, files under orchestration.champion_eval_dir)."""
    def body() -> int:
        from flows.champion_eval import run as eval_flow

        return eval_flow(str(params), _overrides(set_), alias, debug=debug)

    _guard("flow champion-eval", debug, body)


@flow_app.command("pools")
def flow_pools(prefect_file: Annotated[Path, typer.Option("--prefect-file", help="The deployments file whose work "
                                                          "pools to create.")] = Path("prefect.yaml"),
               debug: DebugOpt = False) -> None:
    """Create every work pool the deployments of prefect.yaml name and the Prefect API (PREFECT_API_URL) lacks, as
    process pools; existing pools are left as they are (the first half of `make deploy`)."""
    def body() -> None:
        from flows.deploy import deploy_pools

        typer.echo(deploy_pools(prefect_file))

    _guard("flow pools", debug, body)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
