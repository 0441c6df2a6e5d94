"""HardenedModel operator: the kopf handlers and the reconcile loop, the pure manifest builders, status, the
CRD generator, the API funnel, peering and the operator's metrics; and, for a workstation, the local executor
(`hardened-model up`) and the `hardened-model` CLI. The spec, contracts, signing and gates it uses are the core
package's (hardened_model)."""

__version__ = "0.1.0"
