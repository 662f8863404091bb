"""Helpers the tests share: node fixtures, loopback servers, real daemons in private namespaces."""
