"""Typed, validated view of params.yaml.

Every stage parses the file once into the frozen objects below. A wrong key, type or range raises
`ParamsError` naming the key, the bad value and what is allowed, before any heavy work starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ACTIVATIONS = ("relu", "gelu", "elu", "selu", "silu", "tanh", "leaky_relu")
OPTIMIZERS = ("adam", "adamw", "nadam", "rmsprop", "sgd")
LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "categorical_focal_crossentropy")
DATA_SOURCES = ("embedded", "image_folder", "npz", "idx", "keras")
KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "lanczos")


class ParamsError(ValueError):
    """A params file that cannot be read or does not validate; the message is meant for the user."""


class _Section(BaseModel):
    # Strict so that `batch_norm: "yes"` or `epochs: 2.5` is an error rather than a silent cast.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataParams(_Section):
    source: Literal[DATA_SOURCES]  # type: ignore[valid-type]
    keras_dataset: Literal[KERAS_DATASETS]  # type: ignore[valid-type]
    image_height: int = Field(ge=1, le=4096)
    image_width: int = Field(ge=1, le=4096)
    channels: Literal[1, 3]
    interpolation: Literal[INTERPOLATIONS]  # type: ignore[valid-type]
    aspect: Literal["stretch", "crop", "pad"]
    on_bad_file: Literal["skip", "fail"]
    max_images: int | None = Field(ge=10)
    seed: int = Field(ge=0)


class SplitParams(_Section):
    validation_fraction: float = Field(gt=0, lt=1)
    test_fraction: float = Field(gt=0, lt=1)
    seed: int = Field(ge=0)

    @model_validator(mode="after")
    def _leave_room_for_training(self) -> SplitParams:
        held_out = self.validation_fraction + self.test_fraction
        if held_out >= 1:
            raise ValueError(
                f"validation_fraction + test_fraction = {held_out:g}; their sum must be below 1 "
                "so that images remain for training"
            )
        return self


class TrainParams(_Section):
    conv_blocks: int = Field(ge=1, le=6)
    convs_per_block: int = Field(ge=1, le=4)
    filters: int = Field(ge=1, le=1024)
    kernel_size: int = Field(ge=1, le=11)
    activation: Literal[ACTIVATIONS]  # type: ignore[valid-type]
    batch_norm: bool
    batch_norm_momentum: float = Field(gt=0, lt=1)
    pooling: Literal["flatten", "global_average"]
    dropout_rate: float = Field(ge=0, lt=1)
    dense_units: int = Field(ge=0, le=8192)
    augment_translation: float = Field(ge=0, le=0.5)
    optimizer: Literal[OPTIMIZERS]  # type: ignore[valid-type]
    learning_rate: float = Field(gt=0, le=10)
    lr_schedule: Literal["constant", "cosine"]
    warmup_epochs: int = Field(ge=0)
    loss: Literal[LOSSES]  # type: ignore[valid-type]
    batch_size: int = Field(ge=1, le=8192)
    epochs: int = Field(ge=1, le=10_000)
    early_stopping_patience: int = Field(ge=0)
    jit_compile: bool
    mixed_precision: bool
    intra_op_threads: int = Field(ge=0, le=1024)
    inter_op_threads: int = Field(ge=0, le=1024)
    seed: int = Field(ge=0)

    @model_validator(mode="after")
    def _warmup_within_epochs(self) -> TrainParams:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs = {self.warmup_epochs} must be smaller than epochs = {self.epochs}")
        if self.jit_compile and self.augment_translation > 0:
            raise ValueError(
                "jit_compile = true needs augment_translation = 0: Keras cannot compile its RandomTranslation "
                "layer with XLA and would silently train without XLA"
            )
        return self


class EvaluateParams(_Section):
    batch_size: int = Field(ge=1, le=8192)


class ExportParams(_Section):
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    version: int = Field(ge=1)
    tolerance: float = Field(gt=0, le=0.01)


class RegistryParams(_Section):
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    min_test_accuracy: float = Field(ge=0, le=1)
    max_accuracy_drop: float = Field(ge=0, le=1)


class PredictParams(_Section):
    batch_size: int = Field(ge=1, le=8192)
    top_k: int = Field(ge=1, le=1000)


class MlflowParams(_Section):
    experiment_name: str = Field(min_length=1, max_length=200)


class Params(_Section):
    data: DataParams
    split: SplitParams
    train: TrainParams
    evaluate: EvaluateParams
    export: ExportParams
    registry: RegistryParams
    predict: PredictParams
    mlflow: MlflowParams


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float, as YAML 1.2 and DVC do, instead of as a string."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file.

    Raises:
        ParamsError: the file is missing, is not valid YAML, or does not validate. The message names
            the file, the key, the bad value and what is allowed, one problem per line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ParamsError(f"{path}: cannot read params file: {error.strerror}") from error
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ParamsError(f"{path}:{where}: invalid YAML: {problem}") from error
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections {_field_names(Params)}, got {raw!r}")
    return parse_params(raw, source=str(path))


def parse_yaml(text: str) -> Any:
    """Parse YAML as DVC does, so that `1e-3` is a number.

    Raises:
        yaml.YAMLError: the text is not valid YAML.
    """
    return yaml.load(text, Loader=_Yaml12Loader)


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    """Validate an already-parsed mapping; `source` names it in error messages."""
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        lines = [_describe(source, problem) for problem in error.errors(include_url=False)]
        raise ParamsError("\n".join(lines)) from None


def flatten(params: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Flatten nested params into dotted keys, e.g. `{"train.learning_rate": 0.001}`."""
    flat: dict[str, Any] = {}
    for name in type(params).model_fields:
        value = getattr(params, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            flat.update(flatten(value, prefix=f"{key}."))
        else:
            flat[key] = value
    return flat


def _field_names(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def _section_model(location: tuple[Any, ...]) -> type[BaseModel]:
    model: type[BaseModel] = Params
    for part in location:
        annotation = model.model_fields.get(str(part))
        if annotation is None or not isinstance(annotation.annotation, type):
            break
        if not issubclass(annotation.annotation, BaseModel):
            break
        model = annotation.annotation
    return model


def _describe(source: str, problem: dict[str, Any]) -> str:
    location = tuple(problem["loc"])
    key = ".".join(str(part) for part in location) or "(top level)"
    kind = problem["type"]
    if kind == "extra_forbidden":
        parent = _section_model(location[:-1])
        allowed = _field_names(parent)
        return f"{source}: {key}: unknown key; allowed keys here: {allowed}"
    if kind == "missing":
        return f"{source}: {key}: missing; this key is required"
    message = problem["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if isinstance(problem["input"], dict):
        return f"{source}: {key}: {message}"
    return f"{source}: {key} = {problem['input']!r}: {message}"
