"""GPU readiness (``check`` and ``run``'s final checks): inventory against the instance type
(``inventory``), the Node's allocatable (``allocatable``), NVSwitch fabric (``fabric``), Xid errors
(``xid``) from the kernel log (``kmsg``).
"""
