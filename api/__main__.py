"""`python -m api` is the `omnimember` command."""

from api.cli import main

main()
