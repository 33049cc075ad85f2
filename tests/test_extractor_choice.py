"""The metric follows the data (harness/metrics/choice.py): metrics.extractor=null takes the data
source's feature network, an explicit one must fit the data, and null and its default share one
evaluation cache key (so the default is not a second, differently keyed protocol)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

import harness.config  # noqa: F401  (fills the ConfigStore)
from harness.metrics.choice import extractor_misfit, extractor_name
from harness.stages.cache import stage_keys


@pytest.fixture
def cfg_of():
    def compose_(overrides):
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="harness.config", version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    yield compose_
    GlobalHydra.instance().clear()


# Expected defaults from the statement: digits are scored by the digits classifier, photographs
# and decoded latents by FID's Inception network.
@pytest.mark.parametrize(
    "data,expected",
    [("digits", "digits-cnn"), ("image_folder", "inception-v3-compat"), ("latents", "inception-v3-compat")],
)
def test_null_extractor_is_the_data_sources_default(data, expected, cfg_of):
    cfg = cfg_of([f"data={data}"])
    assert cfg.metrics.extractor is None
    assert extractor_name(cfg) == expected


def test_an_explicit_extractor_wins(cfg_of):
    assert extractor_name(cfg_of(["metrics.extractor=inception-v3-compat"])) == "inception-v3-compat"


@pytest.mark.parametrize(
    "extractor,data,fits",
    [
        ("digits-cnn", "digits", True),
        ("inception-v3-compat", "digits", True),  # Inception takes any image
        ("inception-v3-compat", "image_folder", True),
        ("inception-v3-compat", "latents", True),
        ("digits-cnn", "image_folder", False),
        ("digits-cnn", "latents", False),
    ],
)
def test_an_extractor_must_fit_the_data(extractor, data, fits):
    why = extractor_misfit(extractor, data)
    assert (why is None) == fits, why
    if not fits:  # one line: the key, the fit, and how to get the right weights offline
        assert why.startswith(f"metrics.extractor={extractor} ") and f"data={data}" in why and "\n" not in why
        assert "metrics.extractor=inception-v3-compat" in why and "python -m harness.metrics.inception --out" in why


def test_null_and_its_default_share_the_eval_key_and_other_extractors_do_not(cfg_of):
    null, explicit = stage_keys(cfg_of([])), stage_keys(cfg_of(["metrics.extractor=digits-cnn"]))
    other = stage_keys(cfg_of(["metrics.extractor=inception-v3-compat"]))
    assert null == explicit  # the same protocol, the same cached FID
    assert other.eval != null.eval and other.sample == null.sample  # scoring differently re-scores only
