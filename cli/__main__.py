import sys

from idlegrid.cli.main import main

sys.exit(main())
