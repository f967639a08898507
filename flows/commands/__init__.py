"""One module per `cvflow` sub-command; flows/cli.py registers them."""
