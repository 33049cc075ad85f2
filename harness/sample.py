"""``python -m harness.sample RECORD_OR_DIR [key=value ...]``: the command users type. The
implementation lives in ``harness.app.sample``; this module only keeps the command where the README
says it is."""

from harness.app.sample import main

if __name__ == "__main__":
    raise SystemExit(main())
