"""The document formats every layer reads: architecture JSON, cell graphs, atomic files."""
