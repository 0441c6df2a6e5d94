"""HardenedModel operator: spec model, manifest builders, kopf handlers, local executor and CLI."""

__version__ = "0.1.0"
