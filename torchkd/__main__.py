"""``python -m torchkd ...``: the same command line as the ``torchkd`` script."""

from torchkd.cli import entry_point

if __name__ == "__main__":
    entry_point()
