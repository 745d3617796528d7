import sys

from propagate.cli import main

sys.exit(main())
