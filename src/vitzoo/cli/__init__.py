"""The `vitzoo` command: `main.py` builds the parser; `args.py` holds what subcommands share."""
