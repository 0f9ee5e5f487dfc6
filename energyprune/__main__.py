import sys

from energyprune.cli import main

sys.exit(main())
