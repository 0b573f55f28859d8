"""``python -m job`` is the same program as the ``aweber-job`` console script."""

from job.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
