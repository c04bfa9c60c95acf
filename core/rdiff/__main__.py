import sys

from rdiff.cli import main

sys.exit(main())
