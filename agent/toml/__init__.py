"""Format-preserving TOML: a file's layout (``layout``), inserting lines that follow it (``insert``),
edits (``edit``), parsed values reused for byte-identical files (``cache``).
"""
