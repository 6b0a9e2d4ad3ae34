"""`python -m ragconf` runs the CLI."""

from ragconf.cli import main

main()
