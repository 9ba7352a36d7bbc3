"""Gateway settings come from IDLEGRID_GATEWAY_* variables at start-up, with
documented defaults; a bad value fails with its name."""

from __future__ import annotations

import pytest

from idlegrid.common.errors import ConfigError
from idlegrid.gateway.settings import GatewaySettings


def test_defaults_and_overrides():
    assert GatewaySettings.from_env({}) == GatewaySettings()
    s = GatewaySettings.from_env({"IDLEGRID_GATEWAY_RATE_PER_S": "0", "IDLEGRID_GATEWAY_BURST": "7",
                                  "IDLEGRID_GATEWAY_BODY_BYTES_MAX": "4096"})
    assert (s.rate_per_s, s.burst, s.body_bytes_max) == (0, 7, 4096)


@pytest.mark.parametrize("name, value", [("IDLEGRID_GATEWAY_RATE_PER_S", "fast"),
                                         ("IDLEGRID_GATEWAY_BURST", "0"),
                                         ("IDLEGRID_GATEWAY_BODY_BYTES_MAX", "1"),
                                         ("IDLEGRID_GATEWAY_JOB_TIMEOUT_MS", "999999999")])
def test_a_bad_value_names_its_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        GatewaySettings.from_env({name: value})
