"""``python -m zojax.cli``: the ``zojax`` command."""

import sys

from zojax.cli import main

sys.exit(main())
