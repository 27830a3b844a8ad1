"""Files: atomic writes, checksums, SimpleITK volume reading and writing, PNG overviews."""
