"""EFA userspace: detect the hardware and what is installed, decide, fetch, verify, extract, install.

The EKS AMI already ran ``efa_installer.sh --minimal -y`` (kernel module, rdma-core, efa-config, no
libfabric). On instances with EFA hardware the agent adds the userspace (libfabric, ``fi_info``, Open
MPI) from a **pinned** ``aws-efa-installer-<version>.tar.gz``, verified against a pinned SHA256
and/or AWS's signature before anything runs:

* ``facts``: ``discover`` reads the devices, the installer version file and ``fi_info`` (pure reads);
* ``decision``: ``decide`` (called by ``plan``) turns facts and settings into an ``EfaAction``,
  ``check`` into a health check; both pure;
* ``cache``: the pinned tarball in ``efa.cache_dir``, verified once, downloaded (``agent/efa/download.py``)
  only when the cache lacks a good copy; ``signature``: AWS's signature, checked with ``gpgv``;
* ``install``: ``execute`` (called by ``apply``): safe extraction (``agent/efa/safetar.py``), the
  installer run (``agent/base/process.py``), the re-check.

Importing this package loads nothing: ``check`` and ``plan`` import ``facts`` and ``decision``
themselves, ``download``, ``hashing`` and ``safetar`` (the verified fetch and the safe extraction) only
when they install.
"""
