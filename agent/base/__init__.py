"""The shared base every package stands on: errors and exit codes, atomic file writes, the node root,
processes, retries, timestamps, text, logging, progress, YAML errors. Imports nothing above it.
"""
