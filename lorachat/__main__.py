"""`python -m lorachat`: the same as the `lorachat` command."""
import sys

from lorachat.cli import main

sys.exit(main())
