"""serving.json's writer and reader agree: what build_serving_config renders for each example is read back by
load_serving_config, through a file as the pods read it, with every value the spec gave."""
import json

import pytest

from hardened_model.contracts import (SERVING_CONFIG_API_VERSION, ServingConfigError, build_serving_config,
                                      load_serving_config)
from hardened_model.spec import parse_manifest
from helpers import EXAMPLES, example


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_serving_config_reads_back_with_the_same_values(tmp_path, path):
    model = parse_manifest(example(path.stem))
    written = build_serving_config(model)
    file = tmp_path / "serving.json"
    file.write_text(json.dumps(written, indent=2))
    cfg = load_serving_config(str(file))

    spec = model.spec
    assert cfg.api_version == SERVING_CONFIG_API_VERSION
    assert cfg.model.name == model.metadata.name
    assert cfg.model.input_shape == list(spec.model.input_shape)
    assert cfg.model.num_classes == spec.model.num_classes
    assert cfg.model.labels == (spec.model.labels or [str(i) for i in range(spec.model.num_classes)])
    assert cfg.model.tabular == (spec.data.format == "tabular")
    assert cfg.validation == spec.serving.validation
    assert cfg.rate_limit == spec.serving.rate_limit
    assert cfg.output == spec.serving.output
    assert cfg.auth == spec.serving.auth
    # and nothing is lost or added on the way: the reader's document is the writer's
    assert cfg.model_dump(mode="json", by_alias=True, exclude_unset=True) == written


@pytest.mark.parametrize("change, field", [
    (lambda d: d.update(apiVersion="hardened.dev/serving-config/v0"), "apiVersion"),
    (lambda d: d["model"].update(extra=1), "model.extra"),
    (lambda d: d.pop("rateLimit"), "rateLimit"),
])
def test_a_serving_config_the_writer_would_not_render_is_refused_naming_the_field(tmp_path, change, field):
    doc = build_serving_config(parse_manifest(example("digits-demo")))
    change(doc)
    file = tmp_path / "serving.json"
    file.write_text(json.dumps(doc))
    with pytest.raises(ServingConfigError, match=rf"serving.json: {field}: "):
        load_serving_config(str(file))
