"""`python -m keypost.host`: run the native messaging host on stdin/stdout."""

import sys

from keypost.host.server import main

sys.exit(main(sys.argv[1:]))
