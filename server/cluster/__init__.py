"""Replicas: identical server processes that share only the database.

`identity.py` says who this replica is (a stable slot of its host),
`membership.py` keeps its lease in the database and takes over the work of
replicas whose lease expired, `supervisor.py` runs a host's replicas and its
Envoy (`make up`).
"""
