"""build_serving_config: serving.json for the model server and both sidecars (same builder in a
cluster, where it is a ConfigMap, and for `hardened-model up`, where it is a file)."""
from __future__ import annotations

from ..spec import HardenedModel

SERVING_CONFIG_API_VERSION = "hardened.dev/serving-config/v1"


def build_serving_config(model: HardenedModel) -> dict:
    spec = model.spec
    wire = spec.serving.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {
        "apiVersion": SERVING_CONFIG_API_VERSION,
        "model": {"name": model.metadata.name, "inputShape": list(spec.model.input_shape),
                  "numClasses": spec.model.num_classes,
                  "labels": spec.model.labels or [str(i) for i in range(spec.model.num_classes)],
                  **({"tabular": True} if spec.data.format == "tabular" else {})},
        "validation": wire["validation"],
        "rateLimit": wire["rateLimit"],
        "output": wire["output"],
        "auth": wire["auth"],
    }
