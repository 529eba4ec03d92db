"""The daemon's HTTP port: Prometheus metrics and the health checks of load balancers.

:mod:`.app` is the ASGI application (routes, and ``--allow`` for its clients);
:mod:`.server` runs it under uvicorn in a thread of its own, with the same start and stop
contract as the daemon's other servers.
"""
