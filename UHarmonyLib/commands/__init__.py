"""One module per command-line verb: argument handling and output, no science."""
