import sys

from sloserve.cli import main

sys.exit(main())
