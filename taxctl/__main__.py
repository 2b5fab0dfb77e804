import sys

from taxctl.cli import main

sys.exit(main())
