import sys

from tagsmith.cli import main

sys.exit(main())
