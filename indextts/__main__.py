import sys

from indextts.cli import main

sys.exit(main())
