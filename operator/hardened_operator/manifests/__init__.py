"""Pure builders: spec -> the objects and documents the operator (and `up`) create.

Builders take every input as an argument (no client, no clock, no
environment), so ``hardened-model render`` and the tests see exactly what the
operator applies. ``commands`` builds every process's command line, for the
pods and for `up` alike (issue 26: built twice, they drifted).
"""
