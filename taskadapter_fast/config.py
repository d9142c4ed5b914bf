"""Configuration: one dataclass tree, YAML presets, dotted overrides. Unknown keys are an error; every value
is converted to its field's type (`build_section`, the one way a config dataclass is built from a mapping).

Every ablation of the paper (Tables 3, 4, 6, 7 and Fig. 10) is a `ModelConfig`, not a code edit:
  Table 3  frozen backbone        adapter_layers=0, temporal_embedding=False
           full fine-tuning       full_finetune=True, adapter_layers=0
           AIM (all / partial)    task_adapter=False, adapter_layers=12 / 6
           task only (partial)    aim_adapters=False
           all-layer adapting     adapter_layers=<depth>
  Table 4  no sub-actions         sub_actions="none";  no order adaptation: text_adapter_layers=0;
           no alignment           alignment="none"
  Table 5  video / text score     score="video" / score="text"
  Table 6  averaged / concat      sub_actions="average" / sub_actions="concat"
  Table 7  2/3-layer, Conv1d      alignment_layers=2|3, alignment="conv1d"
  Fig. 10  metric heads           metric="proto_frame"|"otam"|"trx"|"bimhm"
"""

from __future__ import annotations

import copy
import dataclasses
import json
import numbers
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

SUB_ACTION_MODES = ("stages", "none", "average", "concat")
ALIGNMENTS = ("cross_attention", "conv1d", "none")
ALIGNMENT_MODES = ("cross_query", "per_video")
SCORES = ("both", "video", "text")
IMPLS = ("auto", "reference", "triton")


RANDOM_INIT_WORDS = ("none", "null", "false", "")  # model.pretrained=none: no pretrained weights


def random_init_as_none(value: Any) -> Any:
    """The `pretrained` field's spellings of "no pretrained weights" (False, `none`, `false`, ...) -> None."""
    if value is False or (isinstance(value, str) and value.strip().lower() in RANDOM_INIT_WORDS):
        return None
    return value


@dataclass
class ModelConfig:
    """Everything that defines a Task-Adapter++ model (docs/method.md §2–§6)."""

    clip_model: str = "ViT-B-16"  # any open_clip ViT model name (tiny ones are registered by this package)
    # open_clip tag ("openai"), a local checkpoint file, or None: random init, also written `none` or `false` in a
    # config file or override (model.pretrained=none) and False from Python, so a preset's weights can be turned off
    pretrained: str | None = field(default=None, metadata={"parse": random_init_as_none})
    quick_gelu: bool | None = None  # None: follow the pretrained tag (OpenAI CLIP uses QuickGELU)
    init_seed: int = 0  # seeds the random init of the frozen backbone, so a checkpoint alone rebuilds it
    num_frames: int = 8
    # visual branch (docs/method.md §2)
    adapter_layers: int = 6  # L: adapt the last L blocks
    adapter_ratio: float = 0.25  # bottleneck D -> D*ratio -> D
    aim_adapters: bool = True  # T-MSA + A_t, A_s, A_mlp (AIM's adapters)
    task_adapter: bool = True  # Task-MSA + A_task
    temporal_embedding: bool = True
    full_finetune: bool = False  # ablation: train the whole visual backbone
    # semantic branch (docs/method.md §4)
    text_adapter_layers: int = 2  # M: O-MSA + A_o in the last M text blocks
    sub_actions: str = "stages"  # stages | none (plain label) | average | concat
    prompt_template: str = "A video of action about {label}: {stage}"
    label_prompt_template: str = "A video of action about {label}"
    # alignment (docs/method.md §5)
    alignment: str = "cross_attention"
    alignment_layers: int = 1
    alignment_mode: str = "cross_query"  # cross_query (official) | per_video (paper's eq. 15 reading)
    alignment_layernorm: bool = False  # SSv2-Full preset: LayerNorm on the attention output
    # scores (docs/method.md §3, §6)
    metric: str = "proto_mean"
    metric_options: dict[str, Any] = field(default_factory=dict)
    score: str = "both"
    logit_scale: float = 64.0
    official_compat: bool = False  # reproduce the official transposed semantic score (leaks query order!)
    # implementation
    impl: str = "auto"  # auto | reference | triton (see taskadapter_fast.ops)

    def __post_init__(self) -> None:
        self.pretrained = random_init_as_none(self.pretrained)
        self.validate()

    @property
    def needs_corpus(self) -> bool:
        """Whether the prompts carry sub-actions (a corpus is needed): not for score="video" or sub_actions="none"."""
        return self.score != "video" and self.sub_actions != "none"

    @property
    def official_compat_applies(self) -> bool:
        """official_compat changes the scores (it transposes the semantic score, which score="both" multiplies)."""
        return self.official_compat and self.score == "both"

    def validate(self) -> None:
        _check_choice("sub_actions", self.sub_actions, SUB_ACTION_MODES)
        _check_choice("alignment", self.alignment, ALIGNMENTS)
        _check_choice("alignment_mode", self.alignment_mode, ALIGNMENT_MODES)
        _check_choice("score", self.score, SCORES)
        _check_choice("impl", self.impl, IMPLS)
        for name in ("num_frames", "alignment_layers"):
            _check_min(name, getattr(self, name), 1)
        for name in ("adapter_layers", "text_adapter_layers"):
            _check_min(name, getattr(self, name), 0)
        if not 0.0 < self.adapter_ratio <= 1.0:
            raise ValueError(f"adapter_ratio must be in (0, 1], got {self.adapter_ratio!r}")
        if self.alignment != "cross_attention" and self.alignment_layers != 1:
            raise ValueError(f"alignment_layers={self.alignment_layers} needs alignment='cross_attention'")
        if self.alignment == "conv1d" and self.num_frames < 3:
            raise ValueError(f"alignment='conv1d' needs num_frames >= 3, got {self.num_frames}")
        if self.alignment == "cross_attention" and self.num_frames <= self.alignment_layers:
            raise ValueError(
                f"num_frames={self.num_frames} leaves no aligned frame after {self.alignment_layers} cross-attention"
                " layer(s): each layer shortens the sequence by one"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        """ModelConfig(**data) with each value converted to its field's type (errors name the key)."""

        def unknown_keys(unknown: list[str], known: list[str]) -> str:
            return f"unknown model config key(s) in {source}: {unknown}; known keys: {sorted(known)}"

        return build_section(cls, data, unknown_keys=unknown_keys)


# ------------------------------------------------------------------------------------------------ typed sections
Section = TypeVar("Section")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_min(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def build_section(
    cls: type[Section],
    data: Any,
    section: str = "",
    unknown_keys: Callable[[list[str], list[str]], str] | None = None,
) -> Section:
    """cls(**data) with unknown keys refused and every value converted to its field's type.

    A field may name its own reading in its metadata (`field(metadata={"parse": fn})`): fn(value) runs first,
    for spellings the type alone cannot read (ModelConfig.pretrained: `none` means random init).

    The one way a config dataclass (ModelConfig, the run config's sections) is built from a mapping.
    section: where `cls` sits in the config tree ("model", "data.synthetic"), so that errors name a key
    as section.key ("" names the bare key). unknown_keys: (unknown, known keys) -> the error message, for
    a caller that words it its own way; by default it names the keys with their section.
    """
    if isinstance(data, cls):
        return copy.deepcopy(data)
    if not isinstance(data, dict):
        raise ValueError(f"{section or cls.__name__} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown and unknown_keys is not None:
        raise ValueError(unknown_keys(unknown, known))
    if unknown:
        keys = ", ".join(_dotted(section, k) for k in unknown)
        raise ValueError(f"unknown config key(s) {keys}; known keys of {section or cls.__name__}: {', '.join(known)}")
    parsers = {f.name: f.metadata.get("parse") for f in fields(cls)}  # a field's own reading before its type's
    values = {}
    for name, value in data.items():
        value = parsers[name](value) if parsers[name] else value
        values[name] = _coerce(value, hints[name], _dotted(section, name))
    return cls(**values)


def _dotted(section: str, name: str) -> str:
    return f"{section}.{name}" if section else name


def _coerce(value: Any, hint: Any, key: str) -> Any:  # one flat branch per field type, hence its length
    """value converted to the field type `hint`, or a ValueError naming `key`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {hint}")
    if hint is Any:
        return value
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list | tuple):
            raise ValueError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, numbers.Integral):  # numpy integers too, from Python callers
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"{key} must be a number, got {value!r}")
        if isinstance(value, numbers.Real):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{key} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):  # e.g. pretrained=Path(...) from Python
            return os.fspath(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{key} must be a string, got {value!r}")
    if dataclasses.is_dataclass(hint):
        return build_section(hint, value, key)
    raise ValueError(f"{key}: unsupported field type {hint}")


# ------------------------------------------------------------------------------------------------ presets and files
def preset_names() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")]
        for p in resources.files("taskadapter_fast.presets").iterdir()
        if p.name.endswith(".yaml")
    )


def load_preset(name: str) -> dict[str, Any]:
    """The raw preset dictionary (sections `model`, and for training presets more)."""
    path = resources.files("taskadapter_fast.presets") / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; known presets: {preset_names()}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"preset {name!r} is not a mapping")
    return data


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot parse config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at the top level")
    return data


# ------------------------------------------------------------------------------------------------ overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as YAML: numbers, booleans, null, lists)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ValueError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_override(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot set {'.'.join(parts)}: {part!r} is not a section")
    node[parts[-1]] = value


def resolve_model_config(preset_or_config: str | dict | ModelConfig, **overrides: Any) -> ModelConfig:
    """A preset name, a dict of model fields (or a full tree with a `model` section), or a ModelConfig."""
    if isinstance(preset_or_config, ModelConfig):
        data = preset_or_config.to_dict()
        source = "ModelConfig"
    elif isinstance(preset_or_config, str):
        data = dict(load_preset(preset_or_config).get("model", {}))
        source = f"preset {preset_or_config!r}"
    elif isinstance(preset_or_config, dict):
        data = dict(preset_or_config.get("model", preset_or_config))
        source = "config dict"
    else:
        raise TypeError(f"expected a preset name, dict or ModelConfig, got {type(preset_or_config).__name__}")
    data.update(overrides)
    return ModelConfig.from_dict(data, source=source)
