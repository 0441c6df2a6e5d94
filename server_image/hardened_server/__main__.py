"""`python -m hardened_server`: the serving image's entry point (see cli.py)."""
import sys

from .cli import main

sys.exit(main())
