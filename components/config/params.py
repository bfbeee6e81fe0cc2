"""`Params`, the whole validated params.yaml, and `load_params`, its one parser."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from components.config.base import _Strict
from components.config.data import (
    DatasetParams,
    FetchParams,
    IngestParams,
    PathsParams,
    SplitParams,
    TextualizeParams,
    ValidateParams,
)
from components.config.model import BackboneParams, EmbedItemsParams, IndexParams, LoraParams, ModelParams
from components.config.ops import EvaluateParams, MlflowParams, OrchestrationParams, RegistryParams
from components.config.baselines import BaselinesParams
from components.config.training import BenchmarkParams, SelectGatesParams, TrainParams


class Params(_Strict):
    seed: int
    paths: PathsParams
    fetch: FetchParams
    dataset: DatasetParams
    ingest: IngestParams
    validate_: ValidateParams = Field(alias="validate")
    split: SplitParams
    textualize: TextualizeParams
    backbone: BackboneParams
    embed_items: EmbedItemsParams
    model: ModelParams
    index: IndexParams
    lora: LoraParams
    train: TrainParams
    select_gates: SelectGatesParams
    mlflow: MlflowParams
    benchmark: BenchmarkParams
    baselines: BaselinesParams
    evaluate: EvaluateParams
    registry: RegistryParams
    orchestration: OrchestrationParams
    root: Path = Path(".")
    """Folder holding params.yaml; every relative path in the file is relative to it."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _gate_needs_history_path(self) -> "Params":
        if self.select_gates.grid and self.model.history_skip_items < 1:
            raise ValueError("select_gates needs the history path (model.history_skip_items > 0): with gate 0 "
                             "the user vector would have nothing left; set select_gates.grid: []")
        if self.model.item_neighbours.window and not self.embed_items.neighbours.enabled:
            raise ValueError("model.item_neighbours.window > 0 reads the item-neighbourhood factors: set "
                             "embed_items.neighbours.enabled: true (and run `unirec embed-items`)")
        return self

    def tracking_uri(self) -> str:
        """`mlflow.tracking_uri` with a relative sqlite path anchored at `root` (absolute URIs unchanged)."""
        uri = self.mlflow.tracking_uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            return f"sqlite:///{(self.root / uri[len('sqlite:///'):]).resolve()}"
        return uri

    def artifact_location(self) -> str | None:
        """Artifact root of an experiment this project creates: `mlflow.artifact_root` anchored at `root` (a
        file URI) for a local sqlite store, None (the tracking server decides) otherwise. Without it MLflow puts
        artifacts under `./mlruns` of whatever the working directory is."""
        if not self.mlflow.tracking_uri.startswith("sqlite:"):
            return None
        root = self.mlflow.artifact_root
        return root if "://" in root else self.resolve(root).resolve().as_uri()

    def experiment_name(self) -> str:
        return self.mlflow.experiment or self.dataset.name

    def resolve(self, path: str | Path) -> Path:
        """Anchor a (possibly relative) configured path at `root`."""
        p = Path(path)
        return p if p.is_absolute() else self.root / p


class ParamsError(ValueError):
    """params.yaml is missing, unparsable or invalid; the message names the key."""


def load_params(path: str | Path = "params.yaml", overrides: dict[str, object] | None = None) -> Params:
    """Parse and validate `path` once. `overrides` maps dotted keys (``split.cold_item_fraction``) to values."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the project root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value, path)
    raw["root"] = path.resolve().parent
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{path}: invalid configuration"]
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]).replace("validate_", "validate")
            lines.append(f"  {key}: {err['msg']}")
        raise ParamsError("\n".join(lines)) from None


def _set_dotted(raw: dict, dotted: str, value: object, path: Path) -> None:
    node = raw
    keys = dotted.split(".")
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            raise ParamsError(f"{path}: override '{dotted}': '{key}' is not a section")
        node = node[key]
    if keys[-1] not in node:
        raise ParamsError(f"{path}: override '{dotted}': no such key")
    node[keys[-1]] = value
