"""Component versions on the node (``versions``) and the compatibility matrix they are checked against
(``matrix``).
"""
