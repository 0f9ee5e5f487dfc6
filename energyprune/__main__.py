import sys

from energyprune.cli.main import main

sys.exit(main())
