"""``aivmm`` subcommands: thin modules that parse, call the library and render."""
