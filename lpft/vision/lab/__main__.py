"""``python -m lpft.vision.lab``: see :mod:`lpft.vision.lab.cli`."""

from lpft.vision.lab.cli import entry

if __name__ == "__main__":
    entry()
