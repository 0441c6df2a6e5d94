"""Model server, validation sidecar, rate-limit sidecar and the `verify` command."""
