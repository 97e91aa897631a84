from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from image_classification import config
from image_classification.config import Params, ParamsError, flatten, load_params, parse_params
from tests.conftest import PROJECT_ROOT, merged, raw_params


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def error_for(overrides: dict) -> str:
    with pytest.raises(ParamsError) as caught:
        parse_params(merged(raw_params(), overrides), source="params.yaml")
    return str(caught.value)


def test_project_params_load() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.split.validation_fraction + params.split.test_fraction < 1


def test_params_are_frozen() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml")
    with pytest.raises(ValueError, match="frozen"):
        params.train.epochs = 3


def test_exponent_without_dot_is_a_float(tmp_path: Path) -> None:
    text = (PROJECT_ROOT / "params.yaml").read_text().replace("learning_rate: 0.007", "learning_rate: 7e-3")
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert load_params(path).train.learning_rate == pytest.approx(0.007)


def test_flatten_uses_dotted_keys() -> None:
    flat = flatten(load_params(PROJECT_ROOT / "params.yaml"))
    assert flat["train.learning_rate"] == pytest.approx(0.007)
    assert flat["split.seed"] == 42
    assert all(key.count(".") == 1 for key in flat)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"train": {"learning_rate": -0.1}}, "train.learning_rate = -0.1: Input should be greater than 0"),
        ({"train": {"learning_rate": "fast"}}, "train.learning_rate = 'fast': Input should be a valid number"),
        ({"train": {"epochs": 2.5}}, "train.epochs = 2.5: Input should be a valid integer"),
        ({"train": {"epochs": 0}}, "train.epochs = 0: Input should be greater than or equal to 1"),
        ({"train": {"batch_norm": "yes"}}, "train.batch_norm = 'yes': Input should be a valid boolean"),
        ({"train": {"optimizer": "adamax"}}, "train.optimizer = 'adamax': Input should be 'adam', 'adamw'"),
        ({"train": {"activation": "swishy"}}, "train.activation = 'swishy': Input should be 'relu'"),
        ({"train": {"dropout_rate": 1.0}}, "train.dropout_rate = 1.0: Input should be less than 1"),
        ({"train": {"batch_norm_momentum": 1.0}}, "train.batch_norm_momentum = 1.0: Input should be less than 1"),
        ({"train": {"jit_compile": "auto"}}, "train.jit_compile = 'auto': Input should be a valid boolean"),
        (
            {"train": {"jit_compile": True, "augment_translation": 0.1}},
            "train: jit_compile = true needs augment_translation = 0",
        ),
        (
            {"train": {"jit_compile": True, "augment_translation": 0.0, "backend": "torch"}},
            "train: jit_compile = true is not supported on backend torch",
        ),
        ({"train": {"backend": "mxnet"}}, "train.backend = 'mxnet': Input should be 'tensorflow', 'jax' or 'torch'"),
        ({"train": {"mixed_precision": 1}}, "train.mixed_precision = 1: Input should be a valid boolean"),
        (
            {"train": {"intra_op_threads": -1}},
            "train.intra_op_threads = -1: Input should be greater than or equal to 0",
        ),
        ({"split": {"test_fraction": 0}}, "split.test_fraction = 0: Input should be greater than 0"),
        ({"split": {"validation_fraction": 1.5}}, "split.validation_fraction = 1.5: Input should be less than 1"),
        ({"export": {"model_name": "my model/1"}}, "export.model_name = 'my model/1': String should match pattern"),
        ({"data": {"source": "imagenet"}}, "data.source = 'imagenet': Input should be 'embedded'"),
        (
            {"registry": {"min_test_accuracy": 1.5}},
            "registry.min_test_accuracy = 1.5: Input should be less than or equal to 1",
        ),
        (
            {"registry": {"max_accuracy_drop": -0.1}},
            "registry.max_accuracy_drop = -0.1: Input should be greater than or equal to 0",
        ),
    ],
)
def test_bad_value_names_key_value_and_what_is_allowed(overrides: dict, expected: str) -> None:
    message = error_for(overrides)
    assert message.startswith(f"params.yaml: {expected}"), message
    assert len(message.splitlines()) == 1


def test_fractions_summing_to_one_are_rejected() -> None:
    message = error_for({"split": {"validation_fraction": 0.5, "test_fraction": 0.5}})
    assert message == (
        "params.yaml: split: validation_fraction + test_fraction = 1; their sum must be below 1 "
        "so that images remain for training"
    )


def test_warmup_must_be_shorter_than_training() -> None:
    message = error_for({"train": {"epochs": 3, "warmup_epochs": 3}})
    assert message == "params.yaml: train: warmup_epochs = 3 must be smaller than epochs = 3"


def test_unknown_key_lists_allowed_keys() -> None:
    message = error_for({"train": {"learnig_rate": 0.1}})
    assert message.startswith("params.yaml: train.learnig_rate: unknown key; allowed keys here: backend, conv_blocks,")
    assert "learning_rate" in message


def test_unknown_section_is_rejected() -> None:
    message = error_for({"serve": {"port": 1}})
    assert message.startswith("params.yaml: serve: unknown key; allowed keys here: data, split, train")


def test_missing_section_and_key(tmp_path: Path) -> None:
    data = raw_params()
    del data["evaluate"]
    del data["train"]["seed"]
    with pytest.raises(ParamsError) as caught:
        load_params(write(tmp_path, data))
    lines = str(caught.value).splitlines()
    assert any(line.endswith("train.seed: missing; this key is required") for line in lines)
    assert any(line.endswith("evaluate: missing; this key is required") for line in lines)


def test_yaml_syntax_error_gives_line_number(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  source: embedded\ntrain: [unclosed\n")
    with pytest.raises(ParamsError, match=r"params.yaml: line \d+, column \d+: invalid YAML"):
        load_params(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="cannot read params file"):
        load_params(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ParamsError, match="expected a mapping of sections"):
        load_params(path)


def test_stage_stops_on_bad_params_with_one_line_and_keeps_outputs(tmp_path: Path) -> None:
    path = write(tmp_path, merged(raw_params(), {"data": {"max_images": -5}}))
    output = tmp_path / "prepared"
    output.mkdir()
    (output / "manifest.json").write_bytes(b"previous output")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.prepare",
            "--params",
            str(path),
            "--output",
            str(output),
            "--statistics",
            str(tmp_path / "stats.json"),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"prepare: error: {path}: data.max_images = -5: Input should be greater than or equal to 10"
    ]
    assert [path.name for path in output.iterdir()] == ["manifest.json"]
    assert (output / "manifest.json").read_bytes() == b"previous output"
    assert not (tmp_path / "stats.json").exists()


def test_one_flattener_for_typed_params_and_parsed_yaml() -> None:
    raw = raw_params()
    typed = parse_params(raw)
    assert flatten(typed) == flatten(raw)
    assert flatten({"a": {"b": {"c": 1}}, "d": None}) == {"a.b.c": 1, "d": None}


def test_params_reference_lists_every_key_with_its_choices_and_value() -> None:
    text = config.reference(parse_params(raw_params()))
    for section, field in Params.model_fields.items():
        assert f"## `{section}`" in text
        for name in field.annotation.model_fields:
            assert f"| `{name}` |" in text, f"{section}.{name}"
    assert "| `aspect` | `stretch`, `crop`, `pad` | `stretch` |" in text
    assert "| `max_images` | integer, >= 10, or `null` | `null` |" in text
    assert "| `batch_norm` | true or false | `false` |" in text
    assert "| `model_name` | text, at most 100 characters, matching `^[A-Za-z0-9][A-Za-z0-9_.-]*$` | `digits` |" in text
    assert "| `experiment_name` | text, at least 1 character, at most 200 characters |" in text


def test_every_param_has_a_description() -> None:
    missing = [
        f"{section}.{name}"
        for section, field in Params.model_fields.items()
        for name, info in field.annotation.model_fields.items()
        if not info.description
    ]
    assert missing == []


def test_reference_command_writes_the_page_and_refuses_bad_params(tmp_path: Path) -> None:
    output = tmp_path / "params.md"
    assert config.main(["--params", str(PROJECT_ROOT / "params.yaml"), "--output", str(output)]) == 0
    assert output.read_text() == config.reference(load_params(PROJECT_ROOT / "params.yaml"))
    bad = write(tmp_path, merged(raw_params(), {"train": {"epochs": 0}}))
    assert config.main(["--params", str(bad), "--output", str(tmp_path / "other.md")]) == 2
    assert not (tmp_path / "other.md").exists()
