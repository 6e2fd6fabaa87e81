"""The sandbox MCP server: one module per tool family (messaging, social, ads, wordpress, crm,
web, commerce), what they share in ``common``, and ``server`` building and serving the FastMCP
server from them. ``python -m sandboxes.mcp`` runs it."""
