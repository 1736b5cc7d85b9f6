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


def test_a_misspelt_variable_is_refused_naming_the_setting_meant() -> None:
    with pytest.raises(ConfigError, match=r"^X_THRAEDS is not a setting; did you mean X_THREADS\?$"):
        load_config(Sample, "X_", env={"X_THRAEDS": "4"})


def test_an_unrelated_variable_with_the_prefix_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="edgeoffload.config"):
        assert load_config(Sample, "X_", env={"X_SERVICE_HOST": "10.0.0.1", "X_THREADS": "2"}) == Sample(threads=2)
    assert [r.getMessage() for r in caplog.records] == ["ignoring X_SERVICE_HOST: not a setting of this unit (X_...)"]


@pytest.mark.parametrize("unit, prefix, env", [
    ("preprocessor", "PRE_", {"PRE_DEADLNE_MS": "100"}),
    ("inference", "INFER_", {"INFER_CONF_TRESHOLD": "0.5"}),
    ("webserver", "WEB_", {"WEB_MQTT_PASSWROD": "x"}),
])
def test_every_unit_refuses_a_misspelt_variable(unit: str, prefix: str, env: dict[str, str]) -> None:
    from edgeoffload.units.inference import InferenceConfig
    from edgeoffload.units.preprocessor import PreprocessorConfig
    from edgeoffload.units.webserver import WebConfig

    config_class = {"preprocessor": PreprocessorConfig, "inference": InferenceConfig, "webserver": WebConfig}[unit]
    (name,) = env
    with pytest.raises(ConfigError, match=f"^{name} is not a setting; did you mean {prefix}"):
        load_config(config_class, prefix, env=env)


def test_the_units_shipped_settings_pass_the_check() -> None:
    """What the manifests (and so the local testbed) set is all known (tests/test_deploy.py
    checks every manifest's env the same way)."""
    from edgeoffload.unitfolders import unit_settings
    from edgeoffload.units.inference import InferenceConfig
    from edgeoffload.units.preprocessor import PreprocessorConfig
    from edgeoffload.units.webserver import WebConfig

    for unit, config_class, prefix in (("edge-inference", InferenceConfig, "INFER_"),
                                       ("cloud-inference", InferenceConfig, "INFER_"),
                                       ("preprocessor", PreprocessorConfig, "PRE_"), ("webserver", WebConfig, "WEB_")):
        load_config(config_class, prefix, env=unit_settings(unit).env)
