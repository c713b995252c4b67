"""Prometheus metrics: the exposition format, the figures of the service, the endpoint.

``exposition`` writes families of samples as text (Prometheus 0.0.4 or OpenMetrics
1.0) and knows nothing of echod; ``figures`` turns the supervisor's view of its
workers into families; ``process`` reads one process's CPU, memory and descriptors;
``endpoint`` serves ``GET /metrics`` from the supervisor's loop.
"""
