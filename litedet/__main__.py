import sys

from litedet.cli import main

sys.exit(main())
