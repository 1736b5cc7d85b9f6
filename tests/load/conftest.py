"""A real local testbed (broker, inference replicas, preprocessor, webserver) shared by a module."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgeoffload.broker import find_mosquitto
from edgeoffload.local import SiteOptions, Testbed, TestbedOptions
from edgeoffload.relay import LinkProfile


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Testbed:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run `make system-deps`")
    options = TestbedOptions(edge=SiteOptions(instances=1), cloud=SiteOptions(instances=1),
                             wan=LinkProfile(delay_s=0.01, uplink_bps=50e6, downlink_bps=100e6),
                             autoscale=False, workdir=str(tmp_path_factory.mktemp("testbed")))
    with Testbed(options) as running:
        yield running


@pytest.fixture(scope="module")
def workdir(testbed: Testbed) -> Path:
    return testbed.workdir
