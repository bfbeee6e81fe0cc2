"""Reading the files one step hands to the next, with ONE clear error when a file is missing or unreadable.

A step that finds an input truncated or corrupt must not fail with a library's error (``SafetensorError:
Error while deserializing header``, ``UnpicklingError``, ``EOFError``) that names neither the file nor the
cure: every reader here raises `ArtifactError` naming the file and the command that rewrites it, e.g.

    models/unirec/modules.safetensors: unreadable (truncated or corrupt: SafetensorError): re-run `unirec train`

`producer` is that command without the ``unirec`` prefix (``train``, ``embed-items``). `reading(path,
producer)` wraps any other loader (a PEFT adapter, a faiss index) the same way. Integrity (sha256) checks
are not made here: this only turns an unreadable file into a clear message.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class ArtifactError(ValueError):
    """An input file is missing, truncated or corrupt; the message names it and the command that rewrites it."""


def missing(path: Path, producer: str, what: str = "") -> ArtifactError:
    return ArtifactError(f"{path}: {what + ' ' if what else ''}not found: run `unirec {producer}` first")


def unreadable(path: Path, producer: str, exc: BaseException | None = None) -> ArtifactError:
    detail = f": {type(exc).__name__}" if exc is not None else ""
    return ArtifactError(f"{path}: unreadable (truncated or corrupt{detail}): re-run `unirec {producer}`")


@contextlib.contextmanager
def reading(path: Path, producer: str) -> Iterator[None]:
    """Turn a failure of the loader inside the block into `ArtifactError` naming `path` and `producer`.

    Our own errors (`ArtifactError` and the other errors of `components`, which already name the file) pass
    through; a missing file becomes "not found: run `unirec <producer>` first"."""
    try:
        yield
    except ArtifactError:
        raise
    except FileNotFoundError as exc:
        raise missing(Path(exc.filename or path), producer) from exc
    except Exception as exc:  # noqa: BLE001 - any library error while parsing the file means: unreadable
        if type(exc).__module__.startswith("components"):
            raise
        raise unreadable(path, producer, exc) from exc


def read_json(path: Path, producer: str) -> Any:
    """A JSON file written by `unirec <producer>`."""
    with reading(path, producer):
        return json.loads(path.read_text(encoding="utf-8"))


def load_npy(path: Path, producer: str) -> Any:
    """A ``.npy`` array written by `unirec <producer>` (no pickles)."""
    import numpy as np

    with reading(path, producer):
        return np.load(path, allow_pickle=False)


def load_safetensors(path: Path, producer: str) -> dict[str, Any]:
    """A ``.safetensors`` state dict written by `unirec <producer>` (torch tensors)."""
    from safetensors.torch import load_file

    with reading(path, producer):
        return load_file(path)


def torch_load(path: Path, producer: str) -> Any:
    """A ``.pt`` state dict written by `unirec <producer>` (``weights_only``: tensors and plain containers)."""
    import warnings

    import torch

    with reading(path, producer), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's note on a foreign pickle protocol: the error says it
        return torch.load(path, weights_only=True)


def read_parquet(path: Path, producer: str, **kwargs: Any) -> Any:
    """A Parquet table written by `unirec <producer>` (kwargs: `pandas.read_parquet`'s, e.g. columns)."""
    import pandas as pd

    with reading(path, producer):
        return pd.read_parquet(path, **kwargs)
