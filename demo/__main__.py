"""`python -m demo`: ViFT end to end on the embedded synthetic world (see demo/run.py)."""

from .run import main


if __name__ == "__main__":
    main()
