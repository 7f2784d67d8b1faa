"""``python -m futurefill.cli``: the ``futurefill`` command without the console script."""

from futurefill.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
