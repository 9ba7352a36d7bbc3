"""The node config file: the documented example parses; every mistake is a
ConfigError that names its key."""

from __future__ import annotations

import pytest

from idlegrid.common.errors import ConfigError
from idlegrid.node import config_file

EXAMPLE = config_file.__doc__.split("Format (all keys optional except the models to offer)::")[1]


def test_the_documented_example_parses(tmp_path):
    text = "\n".join(line[4:] for line in EXAMPLE.splitlines())
    (tmp_path / "node.toml").write_text(text)
    c = config_file.load(tmp_path / "node.toml")
    assert c.endpoint == "203.0.113.7:8001" and c.region == "eu-west" and c.labels == {"tier": "gaming-pc"}
    llm = c.models["smollm2-135m-instruct"]
    assert (llm.price_per_million_input_tokens, llm.price_per_million_output_tokens) == (100_000, 400_000)
    assert llm.context_length == 2048 and str(llm.weights_file) == "/models/smollm2.gguf"
    assert c.models["echo"].price_per_request == 5
    assert str(c.provider_token_file) == "/etc/idlegrid/provider-token"


def test_relative_weights_files_are_taken_from_the_config_directory(tmp_path):
    (tmp_path / "n.toml").write_text('[models.m]\nprice_per_request = 1\nweights_file = "w.bin"\n')
    assert config_file.load(tmp_path / "n.toml").models["m"].weights_file == tmp_path / "w.bin"


@pytest.mark.parametrize(("text", "names"), [
    ("[models.m]\nprice_per_request = -1\n", "models.m.price_per_request"),
    ("[models.m]\nprice_per_request = 1000000000001\n", "models.m.price_per_request"),
    ("[models.m]\nprice_per_request = 1.5\n", "models.m.price_per_request"),
    ("[models.m]\nprice_per_request = true\n", "models.m.price_per_request"),
    ("[models.m]\nprice_per_request = \"5\"\n", "models.m.price_per_request"),
    ("[models.m]\ncontext_length = 99999999999\n", "models.m.context_length"),
    ("[models.m]\nkind = \"video\"\n", "models.m.kind"),
    ("[models.m]\nprise = 1\n", "prise"),
    ("colour = \"red\"\n[models.m]\n", "colour"),
    ("region = \"x\"\n", "models"),
    ("[models.m]\nweights_digest = \"md5:0\"\n", "weights_digest"),
    ("[models.m]\nweights_digest = \"sha256:" + "0" * 64 + "\"\nweights_file = \"f\"\n", "not both"),
    ("[labels]\nk = 1\n[models.m]\n", "labels"),
    ("[models.m\n", "TOML"),
])
def test_mistakes_are_config_errors_naming_the_key(text, names):
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        config_file.parse(text)


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config_file.load(tmp_path / "absent.toml")
