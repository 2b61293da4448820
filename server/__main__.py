"""``python -m server`` (stub until the server lands)."""

import sys


def main() -> int:
    print("cipherdrop server: not implemented yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
