"""The controller daemon and its HTTP API.

controller.py  LocalPlatform + BuiltinRouter + DeploymentEngine, the reconcile loop
app.py         the FastAPI resources (bearer token from <state_dir>/token)
server.py      `python -m safeship.api.server --config FILE`: uvicorn on loopback
client.py      ControllerClient: what the CLI uses to find, start and call the daemon
"""
