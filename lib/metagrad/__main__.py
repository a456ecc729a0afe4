"""`python -m metagrad`: the same as the `metagrad` command."""

import sys

from metagrad.cli import main

sys.exit(main())
