"""The typed settings of the Python API; every command parses its flags into these."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from tyrjax.errors import TyrjaxError
from tyrjax.evaluation.zeroshot import DEFAULT_LIMIT

DEFAULT_EVAL_CORPORA = ("shakespeare", "pydoc")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model to load: `path` is a Hugging Face directory, a .gguf file, an orbax run
    directory or a hub name (None: the embedded default). `stream` reads each decoder block
    from the checkpoint when it is needed (Týr, uniform and a saved distribution)."""

    path: str | None = None
    tokenizer: str | None = None
    dtype: str = "float32"
    stream: bool = False


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Calibration and evaluation windows (the shakespeare-v1 protocol by default).

    `calib` names the calibration corpus (shakespeare, general, pydoc, sotu, a text file or
    directory, a .jsonl/.parquet file, or hf:NAME[:CONFIG[:SPLIT]]); `calib_windows` None takes
    the method's default (64, or the Týr preset's). general-v1 is `DataConfig("general",
    eval_corpora=("shakespeare", "pydoc", "sotu"))`."""

    calib: str = "shakespeare"
    calib_windows: int | None = None
    eval_windows: int = 16
    eval_corpora: tuple[str, ...] = DEFAULT_EVAL_CORPORA
    batch_size: int = 1

    def __post_init__(self) -> None:
        for name in ("eval_windows", "batch_size"):
            if getattr(self, name) < 1:
                raise TyrjaxError(f"DataConfig.{name}={getattr(self, name)}: must be a positive integer")
        if self.calib_windows is not None and self.calib_windows < 1:
            raise TyrjaxError(f"DataConfig.calib_windows={self.calib_windows}: must be a positive integer or None")
        if not self.eval_corpora:
            raise TyrjaxError("DataConfig.eval_corpora is empty; name at least one corpus, e.g. ('shakespeare',)")


def data_settings(data: DataConfig, calibrates: bool = True) -> dict:
    """What a run directory records of `data`: the windows and corpora, not the batch size
    (which changes only the speed); calibration only for a call that `calibrates`."""
    settings = dataclasses.asdict(data)
    del settings["batch_size"]
    if not calibrates:
        del settings["calib"], settings["calib_windows"]
    return settings


def corpora_list(text: str) -> tuple[str, ...]:
    """A comma-separated list of corpus names (`--eval-data shakespeare,pydoc`)."""
    return tuple(c for c in text.split(",") if c)


@dataclasses.dataclass(frozen=True)
class SDSConfig:
    """SDS (Sparse-Dense-Sparse) settings; None takes the pruner's tuned default
    (`tyrjax.sds.sds_settings`). `seed` is recorded with the run: the method draws no randomness.
    `device_memory_gb` is the per-device budget of the run's phases (None: what the device
    reports; `parallel.memory`)."""

    pruner: str = "sparsegpt"
    pattern: str = "0.5"
    steps: int = 200
    adjust_steps: int | None = None
    adjust: str = "paper"
    lr: float | None = None
    l1: float | None = None
    l2: float | None = None
    optimizer: str = "adam"
    inputs: str = "pruned"
    seed: int = 0
    device_memory_gb: float | None = None


@dataclasses.dataclass(frozen=True)
class TasksConfig:
    """Zero-shot tasks through lm-evaluation-harness: `paper` (the papers' tasks, from local
    copies of their data), or comma-separated task names; `limit` items per task (None: all;
    MMLU's subjects share it)."""

    tasks: str
    limit: int | None = DEFAULT_LIMIT
    batch_size: int = 16


# `BenchConfig.against` value that measures the model alone.
ALONE = "none"


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """The speed sweep: every batch size x prompt length, `new_tokens` greedy decode steps,
    the median of `repeats` timed runs. `against` is the dense model measured in the same run:
    a model path or hub name, `ALONE`, or None for the one the pruning run recorded (else the
    embedded default)."""

    batch_sizes: tuple[int, ...] = (1, 4)
    prompt_lengths: tuple[int, ...] = (128, 512)
    new_tokens: int = 32
    repeats: int = 5
    against: str | None = None


def out_path(out: str | Path | None) -> Path | None:
    return None if out is None else Path(out)
