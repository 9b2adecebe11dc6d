"""``python -m vlsdk``: the same as the ``vlsdk`` console script."""

from vlsdk.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
