"""Kubernetes building blocks shared by the Kubernetes platform, its routers and the environment
manager: the API client (with its errors translated at the edge) and the objects safeship applies.

It sits below `platforms` and `routing`, so that both may use it; the client library is imported
lazily, so the local default never needs it."""
