import sys

from aivmm.cli.main import main

sys.exit(main())
