from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeoffload.config import ConfigError, env_names, load_config


@dataclass(frozen=True)
class Sample:
    name: str = "edge"
    threads: int = 1
    ratio: float = 0.5
    enabled: bool = False
    input_size: tuple[int, int] = (416, 416)
    model_path: str | None = None


def test_defaults_then_yaml_then_env(tmp_path: Path) -> None:
    assert load_config(Sample, "X_", env={}) == Sample()
    settings = tmp_path / "settings.yaml"
    settings.write_text("threads: 3\nname: cloud\ninput_size: [320, 240]\n")
    env = {"X_CONFIG": str(settings), "X_THREADS": "4", "X_ENABLED": "yes", "X_MODEL_PATH": "/m.xml"}
    assert load_config(Sample, "X_", env=env) == Sample(name="cloud", threads=4, enabled=True,
                                                         input_size=(320, 240), model_path="/m.xml")


def test_sizes_and_optionals_parse_from_strings() -> None:
    config = load_config(Sample, "X_", env={"X_INPUT_SIZE": "608x608", "X_MODEL_PATH": ""})
    assert config.input_size == (608, 608) and config.model_path is None


@pytest.mark.parametrize("env, message", [
    ({"X_THREADS": "many"}, "X_THREADS: expected int"),
    ({"X_ENABLED": "perhaps"}, "X_ENABLED: expected bool"),
    ({"X_RATIO": "?"}, "X_RATIO: expected float"),
])
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(Sample, "X_", env=env)


def test_unknown_yaml_keys_are_refused(tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("thread: 3\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(Sample, "X_", env={"X_CONFIG": str(settings)})


def test_env_names_lists_every_variable() -> None:
    assert env_names(Sample, "X_") == ["X_NAME", "X_THREADS", "X_RATIO", "X_ENABLED", "X_INPUT_SIZE",
                                       "X_MODEL_PATH", "X_CONFIG"]
