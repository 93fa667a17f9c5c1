"""``python -m icm_core.cli``: the ``icm`` command."""

import sys

from icm_core.cli.main import main

sys.exit(main())
