"""``python -m harness.inspect <overrides>``: the command users type. The implementation lives in
``harness.app.inspect``; this module only keeps the command where the README says it is."""

from harness.app.inspect import main

if __name__ == "__main__":
    raise SystemExit(main())
