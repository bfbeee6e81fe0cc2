"""Typed, validated view of `params.yaml` — the single configuration source.

`load_params(path)` parses the file once into frozen pydantic objects; unknown keys, wrong types
and out-of-range values fail with the dotted key that is wrong. Paths stay relative strings here;
`Params.resolve(path)` anchors them at the folder that holds the params file.

One module per group of sections: `base` (task keys, the strict base model), `data` (fetch … textualize),
`model` (backbone … LoRA), `training` (warm-up, gate, train, benchmark), `baselines` (the experts), `ops`
(MLflow, evaluate, registry, orchestration) and `params` (the whole file and its parser). Import from
`components.config`.
"""

from components.config.base import (
    GATED_TASKS,
    TASKS,
)
from components.config.data import (
    DatasetParams,
    FetchBackboneParams,
    FetchDatasetParams,
    FetchParams,
    GenericFormat,
    GenericInteractions,
    GenericItems,
    GenericUsers,
    GrouplensFormat,
    IngestParams,
    PathsParams,
    RecboleFormat,
    SplitParams,
    TextualizeParams,
    ValidateParams,
)
from components.config.model import (
    BackboneParams,
    CollabParams,
    EmbedItemsParams,
    HistoryEncoderParams,
    IndexParams,
    ItemNeighboursParams,
    LoraParams,
    ModelParams,
    NeighbourFactorParams,
    TinyBackboneParams,
)
from components.config.training import (
    BenchmarkParams,
    CollabWarmupParams,
    SelectGatesParams,
    TrainParams,
)
from components.config.baselines import (
    BaselinesParams,
    ContentParams,
    CtrGbdtParams,
    CtrParams,
    ItemKnnParams,
    MfParams,
    QueryParams,
    RatingKnnParams,
    RatingRecencyParams,
    SasrecParams,
    SasrecTunedParams,
)
from components.config.ops import (
    EvaluateParams,
    MlflowParams,
    OrchestrationParams,
    RegistryParams,
    ServingParams,
    SteeringParams,
)
from components.config.params import (
    Params,
    ParamsError,
    load_params,
)

__all__ = [
    "BackboneParams",
    "BaselinesParams",
    "BenchmarkParams",
    "CollabParams",
    "CollabWarmupParams",
    "ContentParams",
    "CtrGbdtParams",
    "CtrParams",
    "DatasetParams",
    "EmbedItemsParams",
    "EvaluateParams",
    "FetchBackboneParams",
    "FetchDatasetParams",
    "FetchParams",
    "GATED_TASKS",
    "GenericFormat",
    "GenericInteractions",
    "GenericItems",
    "GenericUsers",
    "GrouplensFormat",
    "HistoryEncoderParams",
    "IndexParams",
    "IngestParams",
    "ItemKnnParams",
    "ItemNeighboursParams",
    "LoraParams",
    "MfParams",
    "MlflowParams",
    "ModelParams",
    "NeighbourFactorParams",
    "OrchestrationParams",
    "Params",
    "ParamsError",
    "PathsParams",
    "QueryParams",
    "RatingKnnParams",
    "RatingRecencyParams",
    "RecboleFormat",
    "RegistryParams",
    "SasrecParams",
    "SasrecTunedParams",
    "SelectGatesParams",
    "ServingParams",
    "SplitParams",
    "SteeringParams",
    "TASKS",
    "TextualizeParams",
    "TinyBackboneParams",
    "TrainParams",
    "ValidateParams",
    "load_params",
]
