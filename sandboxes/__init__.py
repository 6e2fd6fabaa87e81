"""The sandboxes at the network edge: fakes of the outside services the activities talk to.

``sandboxes.mcp`` is the sandbox MCP server (the outside-effect tools, recorded in the Postgres
outbox), ``sandboxes.stripe`` runs localstripe on loopback and ``sandboxes.lago`` is a small
Lago-compatible server, ``sandboxes.wordpress`` a WordPress REST API server (the demo tenant's
site). ``bizosaas dev`` runs them as processes (``python -m sandboxes.mcp``,
``python -m sandboxes.stripe``, ``python -m sandboxes.lago``, ``python -m sandboxes.wordpress``) and
the tests run them in-process.
Nothing in the workflow layers imports them: workflows reach them only over the network, as
they would reach the real services.
"""
