"""The agent's own configuration: the settings and their defaults (``settings``), the rules of their
values (``rules``), reading the YAML file into them (``load``).
"""
