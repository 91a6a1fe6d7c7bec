import sys

from soundstream.cli import main

sys.exit(main())
