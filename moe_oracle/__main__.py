"""``python -m moe_oracle [verify] [options]``: the conformance report."""

import sys

from .cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(main(argv[1:] if argv[:1] == ["verify"] else argv))
