"""``python -m hmnas_nni.cli``: the ``hmnas`` command (used by nnictl trial commands)."""

import sys

from hmnas_nni.cli.main import main

sys.exit(main())
