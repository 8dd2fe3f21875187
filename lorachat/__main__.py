import sys

from lorachat.cli import main

sys.exit(main())
