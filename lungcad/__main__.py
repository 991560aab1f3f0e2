import sys

from lungcad.cli import main

sys.exit(main())
