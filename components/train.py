"""Pipeline step `train`: multitask LoRA training of the universal model with Lightning.

Reads the textualised training examples of every task with a positive mixture weight, trains for
``train.max_steps`` single-task batches (MLflow logging to the project's tracking store, checkpoints
every ``train.checkpoint_every_n_steps``; an interrupted run resumes from ``last.ckpt``), then writes the
artefacts (`components.model.build.save_artifacts`) and ``metrics/train.json``: per-task first/last
losses, tokens/s, examples/s, peak RSS and wall time.

Multi-process training (``train.strategy: ddp``, ``train.devices: N``; ``accelerator`` cpu (gloo) or gpu
(NCCL)): Lightning starts ranks 1..N-1 by running this process's command line again (its subprocess launcher),
so a multi-process run must be started as ``unirec train`` (`check_relaunchable`). Rank 0 alone decides the
resume point, runs the collaborative warm-up, logs to MLflow, writes checkpoints, artefacts and
``metrics/train.json``; the other ranks build the same model, skip the warm-up (rank 0's state is broadcast when
training starts, `LitUniversalRec.on_fit_start`) and write nothing. ``train.batch_size`` is the global batch,
split across the ranks, so N processes train the model one process would (docs/design.md §7).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.strategies import DDPStrategy, Strategy

from components.collab import user_sequences
from components.config import Params, TrainParams
from components.evaluation.ranking import load_split_data, next_item_task
from components.model.build import Built, build_model, save_artifacts, trainable_summary
from components.model.curve import RetrievalCurve
from components.model.data import encode_frames, load_examples
from components.model.lightning import LitUniversalRec, RecDataModule, ThroughputMonitor
from components.model.warmup import WarmupReport, collab_warmup

WARMUP_REPORT = "warmup_report.json"
"""The warm-up's report, kept in the checkpoint folder for a run that resumes past the warm-up."""
log = logging.getLogger(__name__)


@dataclass
class TrainReport:
    steps: int
    losses: dict[str, dict[str, float]]
    throughput: dict[str, float]
    peak_rss_gib: float
    wall_seconds: float
    parameters: dict[str, int]
    artifacts: dict[str, str] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    resumed_from: str | None = None
    """Checkpoint the run resumed from (None for a fresh run); `throughput` covers this process only."""
    collab_warmup: dict | None = None
    """`WarmupReport` of the run's collaborative warm-up (None: off); a resumed run reads it back from the
    checkpoint folder, where the process that ran the warm-up kept it."""

    def summary(self) -> str:
        lines = [WarmupReport(**self.collab_warmup).summary()] if self.collab_warmup else []
        lines += [f"train: {self.steps} steps in {self.wall_seconds:.0f} s, "
                 f"{self.throughput['tokens_per_s']:.0f} tokens/s, {self.throughput['examples_per_s']:.2f} "
                 f"examples/s, peak RSS {self.peak_rss_gib:.2f} GiB, trainable {self.parameters['trainable']:,} "
                 f"of {self.parameters['parameters']:,} parameters"]
        for task, c in sorted(self.losses.items()):
            lines.append(f"  {task:<17} loss {c['first']:.4f} -> {c['last']:.4f} ({int(c['points'])} batches)")
        return "\n".join(lines)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 ** 2)


def curve_summary(curves: dict[str, list[tuple[int, float]]]) -> dict[str, dict[str, float]]:
    """First / last loss per task as the mean of the first / last 20 % of its batches (≥ 1 batch)."""
    out = {}
    for task, points in curves.items():
        values = [v for _, v in points]
        n = max(1, len(values) // 5)
        out[task] = {"first": sum(values[:n]) / n, "last": sum(values[-n:]) / n, "points": float(len(values))}
    return out


def _relative(params: Params, path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(params.root.resolve()))
    except ValueError:
        return path


def run_fingerprint(params: Params) -> str:
    """Hash of everything a checkpoint depends on: model/training params and the input data manifests."""
    parts = {k: getattr(params, k).model_dump() for k in ("backbone", "model", "lora", "train")}
    parts["seed"] = params.seed
    for name in (params.resolve(params.paths.examples_dir) / "manifest.json",
                 params.resolve(params.embed_items.out_dir) / "meta.json"):
        parts[name.name] = name.read_text(encoding="utf-8") if name.is_file() else None
    # max_steps is NOT volatile: the learning-rate schedule depends on it, and a lower value must retrain
    for volatile in ("resume", "val_check_interval", "log_every_n_steps", "checkpoint_every_n_steps",
                     "curve_every_n_steps", "curve_users", "curve_templates", "curve_batch_size"):
        parts["train"].pop(volatile, None)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def process_rank(cfg: TrainParams) -> int:
    """This process's global rank in the run the Trainer will start: 0 in the process a user starts; for the
    processes Lightning's launcher (or torchrun / SLURM) starts, read from the environment it gives them (RANK, or
    NODE_RANK · devices + LOCAL_RANK) — what Lightning itself reads. `train` checks it against the Trainer's."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    return int(os.environ.get("NODE_RANK", 0)) * cfg.devices + int(os.environ.get("LOCAL_RANK", 0))


def check_relaunchable(trainer: L.Trainer) -> None:
    """Lightning's `ddp` starts ranks 1..N-1 by running `sys.argv` again (`_SubprocessScriptLauncher`): from any
    other command than `unirec train` (the Prefect flow, a notebook, pytest) each rank would rerun that whole
    command. Fail before anything starts instead."""
    launcher = trainer.strategy.launcher
    if launcher is None or trainer.world_size == 1 or type(launcher).__name__ != "_SubprocessScriptLauncher":
        return
    if "LOCAL_RANK" in os.environ:  # a rank the launcher (or torchrun) started: its own command line is fine
        return
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    entry = spec.name if spec is not None else Path(sys.argv[0]).name
    if entry not in {"unirec", "unirec.cli", "unirec.__main__"} or sys.argv[1:2] != ["train"]:
        raise RuntimeError(f"train.strategy {trainer.strategy.__class__.__name__} with {trainer.world_size} processes "
                           f"starts ranks 1..{trainer.world_size - 1} by rerunning this process's command line "
                           f"({' '.join(sys.argv[:3])} ...), which is not `unirec train`: run the step as `unirec "
                           "train --set train.strategy=ddp --set train.devices=N` (docs/operations.md §7)")


def _resume_point(params: Params, ckpt_dir: Path, rank: int = 0) -> str | None:
    """`last.ckpt` when resuming is on and it belongs to this very configuration; else start fresh (rank 0
    removes the checkpoints of another configuration; other ranks only read the folder rank 0 prepared)."""
    stamp, last = ckpt_dir / "fingerprint.txt", ckpt_dir / "last.ckpt"
    fingerprint = run_fingerprint(params)
    same = stamp.is_file() and stamp.read_text().strip() == fingerprint
    if params.train.resume and same and last.is_file():
        return str(last)
    if rank != 0:
        return None
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stale = sorted(ckpt_dir.glob("*.ckpt")) + [ckpt_dir / "mlflow_run_id.txt", ckpt_dir / WARMUP_REPORT]
    for old in stale:
        if old.exists():
            if old.suffix == ".ckpt":
                log.info("removing checkpoint of another configuration or a disabled resume: %s", old)
            old.unlink()
    stamp.write_text(fingerprint + "\n")
    return None


def _mlflow_logger(params: Params, ckpt_dir: Path) -> MLFlowLogger:
    run_file = ckpt_dir / "mlflow_run_id.txt"
    run_id = run_file.read_text().strip() if run_file.is_file() and params.train.resume else None
    logger = MLFlowLogger(experiment_name=params.experiment_name(), tracking_uri=params.tracking_uri(),
                          run_name="train", run_id=run_id, log_model=False,
                          artifact_location=params.artifact_location())
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(logger.run_id + "\n")
    return logger


def strategy_of(cfg: TrainParams) -> str | Strategy:
    """`train.strategy` for the Trainer. `ddp` is DDP with `find_unused_parameters`: every step is ONE task's batch,
    so the read-outs of the other tasks get no gradient in that step, which plain DDP refuses."""
    return DDPStrategy(find_unused_parameters=True) if cfg.strategy == "ddp" else cfg.strategy


def make_trainer(params: Params, ckpt_dir: Path, logger: MLFlowLogger | bool, monitor: ThroughputMonitor,
                 n_val_batches: int, extra_callbacks: list[L.Callback]) -> L.Trainer:
    cfg = params.train
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="step-{step}", every_n_train_steps=cfg.checkpoint_every_n_steps,
                                 save_last=True, save_top_k=1, monitor=None)
    return L.Trainer(
        max_steps=cfg.max_steps, accelerator=cfg.accelerator, devices=cfg.devices, strategy=strategy_of(cfg),
        precision=cfg.precision, logger=logger, callbacks=[checkpoint, monitor, *extra_callbacks],
        use_distributed_sampler=False,  # RecDataModule shards each global batch itself (components/model/data.py)
        gradient_clip_val=cfg.grad_clip or None, log_every_n_steps=cfg.log_every_n_steps,
        val_check_interval=cfg.val_check_interval if n_val_batches else None,
        limit_val_batches=n_val_batches if n_val_batches else 0, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, enable_model_summary=False, default_root_dir=str(ckpt_dir.parent),
        enable_progress_bar=True)


def _warmup_of_run(params: Params, built: Built, seed: int, logger: MLFlowLogger, ckpt_dir: Path,
                   resume: str | None) -> dict | None:
    """The warm-up's report: run now (fresh run; kept next to the checkpoints) or read back (resumed run)."""
    saved = ckpt_dir / WARMUP_REPORT
    if not params.train.collab_warmup.steps:
        return None
    if resume is not None:  # the checkpoint holds the warmed-up state; its report was kept when it ran
        if saved.is_file():
            return json.loads(saved.read_text(encoding="utf-8"))
        log.warning("resumed from %s without %s: metrics/train.json will lack the warm-up's record", resume, saved)
        return None
    report = asdict(_run_warmup(params, built, seed, logger))
    saved.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _run_warmup(params: Params, built: Built, seed: int, logger: MLFlowLogger) -> WarmupReport:
    """The collaborative warm-up on the training sequences (components/model/warmup.py), logged to MLflow."""
    frame = pd.read_parquet(params.resolve(params.paths.splits_dir) / "train.parquet",
                            columns=["user_idx", "item_idx", "order", "rating"])
    cfg = params.train.collab_warmup
    grid = params.model.item_neighbours.weight_grid if built.model.neighbours is not None else []
    valid = next_item_task(load_split_data(params, ("train", "valid")), "valid") if cfg.eval_every or grid else None
    ratings = user_sequences(frame, "rating") if cfg.rating_weight else None
    report = collab_warmup(built.model, user_sequences(frame), cfg, seed, params.train.log_every_n_steps, valid,
                           ratings, grid)
    for step, value in report.curve:
        logger.experiment.log_metric(logger.run_id, "warmup/loss", value, step=int(step))
    for step, value in report.valid_curve:
        logger.experiment.log_metric(logger.run_id, "warmup/valid_ndcg_at_10", value, step=int(step))
    for weight, value in report.neighbour_curve:
        logger.experiment.log_metric(logger.run_id, f"warmup/neighbour_beta_{weight:g}/valid_ndcg_at_10", value)
    if report.neighbour_weight is not None:
        logger.experiment.log_metric(logger.run_id, "warmup/neighbour_beta", report.neighbour_weight)
    logger.experiment.log_metric(logger.run_id, "warmup/seconds", report.seconds)
    return report


def train(params: Params, built: Built | None = None, callbacks: list[L.Callback] | None = None) -> TrainReport:
    """Train from params (or a pre-built model); returns the report and writes artefacts.

    `callbacks` are added to the Trainer (tests use one to interrupt a run).
    """
    start = time.perf_counter()
    cfg = params.train
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    seed = params.seed + cfg.seed_offset
    L.seed_everything(seed, workers=True, verbose=False)
    built = built or build_model(params)
    tasks = [t for t, w in cfg.task_weights.items() if w > 0]
    examples_dir = params.resolve(params.paths.examples_dir)
    tokenizer = built.backbone.tokenizer
    train_sets = encode_frames(load_examples(examples_dir, tasks, "train"), tokenizer, built.spec)
    val_sets = encode_frames(load_examples(examples_dir, tasks, "valid", cfg.val_examples_per_task, seed),
                             tokenizer, built.spec) if cfg.val_examples_per_task else {}
    pad_id = int(tokenizer.pad_token_id)
    data = RecDataModule(train_sets, val_sets, cfg, seed, pad_id)
    out_dir = params.resolve(cfg.out_dir)
    ckpt_dir = params.resolve(cfg.checkpoint_dir)
    rank = process_rank(cfg)  # > 0: a process Lightning's DDP launcher started; it writes and logs nothing
    resume = _resume_point(params, ckpt_dir, rank)
    logger = _mlflow_logger(params, ckpt_dir) if rank == 0 else None
    monitor = ThroughputMonitor()
    curve = RetrievalCurve(params, built) if cfg.curve_every_n_steps and rank == 0 else None
    n_val = sum(-(-len(v) // cfg.batch_size) for v in val_sets.values())
    trainer = make_trainer(params, ckpt_dir, logger or False, monitor, n_val,
                           [*([curve] if curve else []), *(callbacks or [])])
    if trainer.global_rank != rank:
        raise RuntimeError(f"process rank {rank} from the environment, but the Trainer says {trainer.global_rank}")
    check_relaunchable(trainer)
    warmup = _warmup_of_run(params, built, seed, logger, ckpt_dir, resume) if logger is not None else None
    lit = LitUniversalRec(built.model, cfg, seed)
    built.model.train()  # the backbone was loaded in eval mode
    log.info("training %s on %s (resume: %s)", trainable_summary(built.model), tasks, resume or "no")
    with warnings.catch_warnings():
        # the folder holds our own bookkeeping (fingerprint.txt, mlflow_run_id.txt) and, when resuming, this very
        # configuration's last.ckpt; checkpoints of any other configuration were removed by _resume_point
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        trainer.fit(lit, datamodule=data, ckpt_path=resume, weights_only=True)  # tensors and plain containers only
    report = TrainReport(steps=int(trainer.global_step), losses=curve_summary(monitor.curves),
                         throughput=monitor.summary(), peak_rss_gib=peak_rss_gib(),
                         wall_seconds=time.perf_counter() - start, parameters=trainable_summary(built.model),
                         resumed_from=resume, collab_warmup=warmup)
    if logger is None:  # rank > 0: rank 0 holds the same weights and writes them
        return report
    report.artifacts = {k: _relative(params, v) for k, v in save_artifacts(built, params, out_dir).items()}
    report.mlflow_run_id = logger.run_id
    report.wall_seconds = time.perf_counter() - start
    metrics_dir = params.resolve(params.paths.metrics_dir)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    payload = asdict(report) | {"curves": {t: [[s, round(v, 5)] for s, v in pts] for t, pts in monitor.curves.items()},
                                "retrieval_curve": curve.points if curve else []}
    (metrics_dir / "train.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    logger.experiment.log_dict(logger.run_id, payload, "train_report.json")
    for task, c in report.losses.items():
        logger.experiment.log_metric(logger.run_id, f"final_loss_{task}", c["last"])
    return report
