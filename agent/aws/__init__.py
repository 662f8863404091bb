"""EC2: the instance metadata service, IMDSv2 (``imds``)."""
