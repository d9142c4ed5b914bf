"""The full run configuration: `model` (ModelConfig) + `data` + `train`, built from a preset, a config file
and dotted command-line overrides. Unknown keys and ill-typed values are errors naming the key.

Precedence, lowest first: the dataclass defaults (the paper's protocol, docs/method.md §7) < the preset
(`--preset NAME`; with neither `--preset` nor `--config` the embedded `demo` preset) < the config
file (`--config FILE`, YAML or JSON, the same tree as `config.yaml` in a run directory) < dotted
overrides (`train.lr=0.01`, `data.n_way=10`, `model.adapter_layers=4`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import (
    ModelConfig,
    _check_choice,
    _check_min,
    apply_override,
    build_section,
    load_config_file,
    load_preset,
    parse_override,
)

DEFAULT_PRESET = "demo"
DATASETS = ("synthetic", "splits")
SPLIT_FORMATS = ("auto", "official", "trx", "clipfsar", "folder", "manifest")
DECODERS = ("auto", "pyav", "dali_cpu", "dali_gpu")
SCHEDULES = ("constant", "step", "cosine")
AMP_MODES = ("none", "bf16")
SECTIONS = ("model", "data", "train")
# The settings `--resume` may change: how clips are decoded, how many episodes are decoded ahead, the CPU
# threads, and how often the run logs and saves. None changes what the run computes (its episodes, weights
# and accuracies); every other setting is fixed when the run starts.
RUNTIME_KEYS = ("data.decoder", "data.prefetch", "train.cpu_threads", "train.log_every", "train.save_every")

log = logging.getLogger(__name__)


@dataclass
class SyntheticConfig:
    """Generation parameters of the built-in synthetic dataset (`make_synthetic_dataset`)."""

    seed: int = 0
    videos_per_class: int = 8
    min_frames: int = 16
    max_frames: int = 24
    size: int = 64
    noise: float = 8.0
    distractors: int = 2
    jpeg_quality: int = 95


@dataclass
class DataConfig:
    """Where episodes come from and their shape (C-way K-shot, Q queries per class)."""

    dataset: str = "splits"  # splits: the split files below | synthetic: the built-in dataset (generated once)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # a folder `python -m taskadapter_fast.data fetch-splits` wrote: the three split files, the class order and the
    # corpus default to its lists, the shipped order of index-only lists and the corpus file in it
    split_dir: str | None = None
    train_split: str | None = None  # split file (official/TRX/CLIP-FSAR list), folder-per-class dir or manifest
    val_split: str | None = None
    test_split: str | None = None
    root: str | None = None  # relative video paths start here (synthetic: the dataset folder; None = cache)
    corpus: str | None = None  # sub-action corpus (official YAML or JSON); synthetic: its own corpus
    format: str = "auto"
    class_names: str | None = None  # names file for index-only lists (see data.splits.load_class_names)
    val_class_names: str | None = None  # names file for the val split instead (SSv2-Full: no source names them)
    path_map: str | None = None  # OLD:NEW: listed paths under OLD (another machine's disk) are read under NEW
    decoder: str = "auto"
    n_way: int = 5
    n_shot: int = 1
    n_query: int = 1
    image_size: int | None = None  # None: the backbone's input size
    prefetch: int = 2  # episodes decoded ahead in a background thread

    def validate(self, require_splits: bool = True) -> None:
        """require_splits: the three split files of data.dataset=splits (training needs them, evaluation one)."""
        _check_choice("data.dataset", self.dataset, DATASETS)
        _check_choice("data.format", self.format, SPLIT_FORMATS)
        _check_choice("data.decoder", self.decoder, DECODERS)
        for name in ("n_way", "n_shot", "n_query"):
            _check_min(f"data.{name}", getattr(self, name), 1)
        _check_min("data.prefetch", self.prefetch, 0)
        if self.image_size is not None:
            _check_min("data.image_size", self.image_size, 1)
        if self.path_map is not None:
            old, colon, new = self.path_map.partition(":")
            if not colon or not old.strip() or not new.strip():
                raise ValueError(f"data.path_map must be OLD:NEW, got {self.path_map!r}")
        if self.dataset == "splits" and require_splits:
            missing = [f"data.{s}" for s in ("train_split", "val_split", "test_split") if not getattr(self, s)]
            if missing:
                raise ValueError(
                    f"data.dataset=splits needs {', '.join(missing)} (split files of your dataset), "
                    "or use the built-in data: data.dataset=synthetic"
                )


@dataclass
class TrainConfig:
    """Optimisation and protocol. Defaults are the paper's (docs/method.md §7.2): 10 x 1000 episodes, SGD lr 1e-3."""

    seed: int = 0  # training episodes, augmentation and adapter initialisation
    eval_seed: int = 1234  # validation and test episodes: fixed, so runs with other seeds see the same ones
    epochs: int = 10
    episodes_per_epoch: int = 1000  # training episodes per epoch, over all ranks
    val_episodes: int = 1000
    test_episodes: int = 10000
    warmup_epochs: int = 0  # no validation before this many epochs are done
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant (the official run's effective schedule) | step | cosine
    milestones: list[float] = field(default_factory=list)  # step: epochs at which lr *= gamma
    gamma: float = 0.1
    min_lr: float = 0.0  # cosine: the final learning rate
    accumulate: int = 1  # episodes per optimizer step (per rank)
    amp: str = "none"  # none | bf16 (autocast where the device supports it)
    compile: bool = False  # torch.compile the model's forward
    compile_backend: str = "inductor"  # torch.compile backend (any name torch._dynamo.list_backends knows)
    grad_checkpoint: bool = False  # recompute the adapted blocks in the backward pass
    save_every: int = 50  # episodes between resumable state saves (also at every epoch end)
    log_every: int = 10  # episodes between metric lines
    cpu_threads: int | None = None  # torch intra-op threads on a CPU run (None: torch's default); 1 is
    # faster on a shared or small CPU, where spinning worker threads compete with the episode decoders
    eval_cache: bool = True  # frozen-prefix and class-text caches at validation and test
    untrained_baseline: bool = True  # also test the untrained model on the same test episodes

    def validate(self) -> None:
        _check_choice("train.schedule", self.schedule, SCHEDULES)
        _check_choice("train.amp", self.amp, AMP_MODES)
        for name in ("epochs", "episodes_per_epoch", "accumulate", "save_every", "log_every"):
            _check_min(f"train.{name}", getattr(self, name), 1)
        for name in ("val_episodes", "test_episodes", "warmup_epochs"):
            _check_min(f"train.{name}", getattr(self, name), 0)
        for name in ("lr", "momentum", "weight_decay", "gamma", "min_lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.compile:
            import torch._dynamo

            backends = torch._dynamo.list_backends(exclude_tags=())
            _check_choice("train.compile_backend", self.compile_backend, tuple(backends))
        if self.cpu_threads is not None:
            _check_min("train.cpu_threads", self.cpu_threads, 1)
        if self.lr == 0:
            raise ValueError("train.lr must be > 0")
        if self.episodes_per_epoch % self.accumulate:
            raise ValueError(
                f"train.episodes_per_epoch={self.episodes_per_epoch} must be a multiple of "
                f"train.accumulate={self.accumulate}"
            )
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"train.milestones must be increasing, got {self.milestones}")
        if self.schedule == "step" and not self.milestones:
            raise ValueError("train.schedule=step needs train.milestones (epochs), e.g. train.milestones=[4,8]")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.model.validate()
        self.data.validate()
        self.train.validate()
        if self.data.dataset == "splits" and self.data.corpus is None and self.model.needs_corpus:
            raise ValueError(
                "data.dataset=splits needs data.corpus (the sub-action corpus file); "
                "only model.score=video or model.sub_actions=none run without one"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, tree: dict[str, Any], preset: str | None = None) -> RunConfig:
        """A (possibly partial) tree over the defaults; every key and value is checked.

        preset: the preset the tree started from, checked against the dataset of a `data.split_dir`.
        """
        if not isinstance(tree, dict):
            raise ValueError(f"a run config must be a mapping with sections {SECTIONS}, got {type(tree).__name__}")
        unknown = sorted(set(tree) - set(SECTIONS))
        if unknown:
            raise ValueError(f"unknown config section(s) {unknown}; known sections: {list(SECTIONS)}")
        config = cls(
            model=build_section(ModelConfig, tree.get("model") or {}, "model"),
            data=build_section(DataConfig, tree.get("data") or {}, "data"),
            train=build_section(TrainConfig, tree.get("train") or {}, "train"),
        )
        if config.data.split_dir is not None:
            _apply_split_dir(config, preset)
        _preset_class_order(config, preset)
        config.validate()
        return config


def _apply_split_dir(config: RunConfig, preset: str | None) -> None:
    """Fills what `data.split_dir` (a fetch-splits folder) gives where the config leaves it unset: the three
    split files, the class order and val names, and the corpus. Set values win.

    A benchmark preset must be the folder's dataset: the presets differ in model settings (adapter layers,
    the SSv2-Full LayerNorm), so `--preset hmdb51` on SSv2 lists would train a recipe the paper never ran.
    """
    from .data.splits_fetch import DATASETS as BENCHMARKS
    from .data.splits_fetch import corpus_command, read_split_dir

    data = config.data
    if data.dataset != "splits":
        raise ValueError(f"data.split_dir={data.split_dir} needs data.dataset=splits, got data.dataset={data.dataset}")
    fetched = read_split_dir(data.split_dir)
    if preset in BENCHMARKS and preset != fetched.dataset:
        raise ValueError(
            f"--preset {preset} is the {preset} benchmark, but data.split_dir={data.split_dir} holds the "
            f"{fetched.dataset} lists ({fetched.manifest}); use --preset {fetched.dataset}, or the folder of the "
            f"{preset} lists"
        )
    for split, path in fetched.files.items():
        if getattr(data, f"{split}_split") is None:
            setattr(data, f"{split}_split", str(path))
    if data.class_names is None:
        data.class_names = fetched.class_names
    if data.val_class_names is None and fetched.val_unnamed and fetched.val_names_file.is_file():
        data.val_class_names = str(fetched.val_names_file)
    if data.corpus is None:
        if fetched.corpus.is_file():
            data.corpus = str(fetched.corpus)
        elif config.model.needs_corpus:
            raise FileNotFoundError(
                f"data.split_dir={data.split_dir} holds no corpus ({fetched.corpus}); fetch the authors' with "
                f"`{corpus_command(fetched)}`, or give one as data.corpus=FILE"
            )


def _preset_class_order(config: RunConfig, preset: str | None) -> None:
    """A benchmark preset on index-only lists (official label ids, CLIP-FSAR / TRX SSv2-Full class indices) with
    no data.class_names: the published order of that benchmark's lists names their classes."""
    from .data.splits import published_order_for
    from .data.splits_fetch import DATASETS as BENCHMARKS

    data = config.data
    if preset not in BENCHMARKS or data.dataset != "splits" or data.class_names is not None or not data.train_split:
        return
    spec = published_order_for(data.train_split, preset)
    if spec is not None:
        data.class_names = spec
        log.info("data.class_names=%s: the published class order of the %s lists' label ids", spec, preset)


# ------------------------------------------------------------------------------------------------ merging
def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """base updated recursively by update (dicts merge, everything else replaces)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "metric_options":
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def preset_tree(name: str) -> dict[str, Any]:
    tree = load_preset(name)
    unknown = sorted(set(tree) - set(SECTIONS))
    if unknown:
        raise ValueError(f"preset {name!r} has unknown section(s) {unknown}; known sections: {list(SECTIONS)}")
    return tree


def resolve_run_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    tree: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults < preset (default `demo` when no preset and no config file) < config file < tree < overrides."""
    merged: dict[str, Any] = {}
    if preset is None and config_file is None and tree is None:
        preset = DEFAULT_PRESET
    if preset is not None:
        merged = _merge(merged, preset_tree(preset))
    if config_file is not None:
        merged = _merge(merged, load_config_file(config_file))
    if tree is not None:
        merged = _merge(merged, tree)
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] not in SECTIONS:
            raise ValueError(
                f"override {text!r}: unknown section {parts[0]!r}; keys look like model.X, data.X or train.X"
            )
        apply_override(merged, parts, value)
    return RunConfig.from_dict(merged, preset)


def run_config_from_json(text: str) -> RunConfig:
    """The `run_config` metadata of a training checkpoint -> RunConfig."""
    return RunConfig.from_dict(json.loads(text))


# ------------------------------------------------------------------------------------------------ resuming
def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1} (every leaf under its dotted key)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_keys(old: RunConfig, new: RunConfig) -> list[str]:
    """The dotted keys whose values differ between two run configs, sorted."""
    before, after = _flatten(old.to_dict()), _flatten(new.to_dict())
    return sorted(key for key in before.keys() | after.keys() if before.get(key, ...) != after.get(key, ...))


def refuse_fixed_keys(keys: list[str], what: str) -> None:
    """ValueError naming the keys of `keys` that are not runtime-only: `what` (e.g. "... differs in") + the keys."""
    fixed = [key for key in keys if key not in RUNTIME_KEYS]
    if fixed:
        raise ValueError(f"{what} {', '.join(fixed)}; on resume only {', '.join(RUNTIME_KEYS)} can change")


def with_runtime_settings(config: RunConfig, source: RunConfig) -> RunConfig:
    """`config` with the runtime-only settings (`RUNTIME_KEYS`) of `source`."""
    config = copy.deepcopy(config)
    for key in RUNTIME_KEYS:
        section, name = key.split(".")
        setattr(getattr(config, section), name, getattr(getattr(source, section), name))
    return config


__all__ = [
    "RUNTIME_KEYS",
    "DataConfig",
    "RunConfig",
    "SyntheticConfig",
    "TrainConfig",
    "changed_keys",
    "preset_tree",
    "refuse_fixed_keys",
    "resolve_run_config",
    "run_config_from_json",
    "with_runtime_settings",
]
