"""The training Job's program: data, sanitization, adversarial + DP-SGD training, evaluation, signing."""
