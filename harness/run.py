"""``python -m harness.run``: the command users type. The Hydra app lives in ``harness.app.run``;
this module only keeps the command where the README says it is."""

from harness.app.run import main

if __name__ == "__main__":
    main()
