"""`python -m service` runs the `forecast-service` command."""

from service.cli import main

main()
