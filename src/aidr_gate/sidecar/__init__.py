"""The gate as a Kubernetes sidecar: an HTTP proxy in front of the model server, streams untouched.

``app`` builds the ASGI app ``aidr-gate serve`` runs (the middleware around ``proxy``); ``proxy``
forwards an admitted request upstream and passes the response back as it arrives.
"""
