"""``python -m xrimpute``: the ``xrimpute`` command."""
import sys

from .cli import main

sys.exit(main())
