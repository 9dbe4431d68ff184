"""``python -m clloop_jax``: the ``clloop`` command line."""
import sys

from clloop_jax.workflow.cli import main

sys.exit(main())
