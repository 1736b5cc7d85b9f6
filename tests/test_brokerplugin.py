"""The broker's client-id plugin builds once per source and compiler, and says what is missing.
(What it enforces, against the real Mosquitto, is in tests/test_broker.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from edgeoffload import brokerplugin
from edgeoffload.brokerplugin import PluginBuildError, build_plugin


def test_the_plugin_is_built_once_and_reused(tmp_path: Path) -> None:
    first = build_plugin(tmp_path)
    built_at = first.stat().st_mtime_ns
    assert first.name == brokerplugin.LIBRARY_NAME and first.read_bytes()[:4] == b"\x7fELF"
    assert build_plugin(tmp_path) == first and first.stat().st_mtime_ns == built_at
    assert [p.name for p in first.parent.iterdir()] == [brokerplugin.LIBRARY_NAME]   # no scratch left


def test_an_edited_source_is_built_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_plugin(tmp_path)
    edited = tmp_path / "edited.c"
    edited.write_text(brokerplugin.SOURCE.read_text() + "\n/* edited */\n")
    monkeypatch.setattr(brokerplugin, "SOURCE", edited)
    assert build_plugin(tmp_path) != first


def test_no_compiler_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PluginBuildError, match="needs a C compiler .*apt-get install mosquitto-dev"):
        build_plugin(tmp_path)


def test_missing_headers_name_the_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "plugin.c"
    source.write_text("#include <mosquitto_plugin_that_is_not_installed.h>\n")
    monkeypatch.setattr(brokerplugin, "SOURCE", source)
    with pytest.raises(PluginBuildError, match="failed .*mosquitto-dev libmosquitto-dev gcc"):
        build_plugin(tmp_path)
    assert not list(tmp_path.rglob(brokerplugin.LIBRARY_NAME))
