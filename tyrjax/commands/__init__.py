"""The command layer: one module per `tyrjax` command, each with `add_parser(sub)` and `run(args)`,
turning flags into the typed settings of `tyrjax.api` and printing what the call returns."""
