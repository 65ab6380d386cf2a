"""`python -m reward_server --host H --port P [--workers N]`."""

import sys

from reward_server.server import main

if __name__ == "__main__":
    sys.exit(main())
