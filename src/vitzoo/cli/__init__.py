"""The `vitzoo` command: `main.py` builds the parser from the configs, `commands.py` holds the subcommands, `flags.py`
generates flags from a config, `errors.py` maps errors to one line and an exit code. Only this package imports
argparse; nothing outside it imports it."""
