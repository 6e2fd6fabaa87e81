"""``python -m sandboxes.mcp``: the sandbox MCP server (see :mod:`sandboxes.mcp.server`)."""

from sandboxes.mcp.server import main

raise SystemExit(main())
